# Sourced by the other scripts: make .venv (Python 3.11+) and install the project into it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
pick_python() {
    for py in "${PYTHON:-}" python3 python3.13 python3.12 python3.11 python; do
        [ -n "$py" ] || continue
        command -v "$py" >/dev/null 2>&1 || continue
        if "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            echo "$py"; return 0
        fi
    done
    echo "combined-models needs Python 3.11 or newer on PATH" >&2
    return 1
}
ensure_venv() {  # $1: the extra to install ("" or "test")
    local extra=$1 stamp=.venv/.installed-${1:-base}
    if [ ! -x .venv/bin/python ]; then
        "$(pick_python)" -m venv .venv
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
        # The build backend's notes (how editable installs work) are not news to a user setting up.
        if [ -n "$extra" ]; then
            PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extra]"
        else
            PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q --disable-pip-version-check -e .
        fi
        touch "$stamp"
    fi
}
