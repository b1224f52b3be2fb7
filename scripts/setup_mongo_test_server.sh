#!/usr/bin/env bash
# Build the venv that runs the MongoDB wire-protocol test server (mongoeco) used by
# tests/fixtures_mongo.py. mongoeco needs Python >= 3.13, so it gets its own venv,
# separate from the project's .venv; its `wire` extra brings the bson codec the server needs.
# Idempotent: re-running only re-checks the install.
#
#   scripts/setup_mongo_test_server.sh            # uses $MONGO_TEST_PYTHON or finds a python3.13+
#   MONGO_TEST_PYTHON=/path/to/python3.13 scripts/setup_mongo_test_server.sh
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv_dir="${MONGO_TEST_VENV:-$repo_root/.venv-mongo}"
mongoeco_version="4.11.0"

find_python() {
    if [[ -n "${MONGO_TEST_PYTHON:-}" ]]; then echo "$MONGO_TEST_PYTHON"; return; fi
    for candidate in python3.14 python3.13 /root/.pyenv/versions/3.13.*/bin/python3 /usr/local/bin/python3.13 /usr/bin/python3.13; do
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null; then
            command -v "$candidate"; return
        fi
    done
    return 1
}

python_bin="$(find_python)" || {
    echo "setup_mongo_test_server: no Python >= 3.13 found (mongoeco needs it); set MONGO_TEST_PYTHON" >&2
    exit 1
}

if [[ ! -x "$venv_dir/bin/python" ]]; then
    "$python_bin" -m venv "$venv_dir"
fi
"$venv_dir/bin/python" -m pip install --quiet --disable-pip-version-check "mongoeco[wire]==$mongoeco_version"
"$venv_dir/bin/python" -c "import bson, mongoeco.wire.proxy"  # the wire server needs bson (from pymongo)
echo "mongo test server venv ready: $venv_dir (mongoeco $mongoeco_version)"
