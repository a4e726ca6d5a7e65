# Sourced by the scripts: make .venv (once, and again when pyproject.toml changes) with the
# package and its dev/cli/redis extras installed in editable mode.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "runcomfy-async needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "Setting up .venv (first run only)..." >&2
  "$py" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -U pip >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' >&2
  rm -f .venv/.installed-*
  touch "$stamp"
fi
