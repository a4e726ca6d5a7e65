# Sourced by the scripts: make .venv (once, and again when pyproject.toml changes) with the
# package installed in editable mode with the extras the caller names in VENV_EXTRAS (default
# "dev", everything the tests need; the demo asks only for "cli", which is quicker to install).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "runcomfy-async needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
extras="${VENV_EXTRAS:-dev}"
hash="$(sha256sum pyproject.toml | cut -c1-16)"
# "dev" includes every other extra, so its stamp serves any caller.
if [ ! -f ".venv/.installed-$hash-$extras" ] && [ ! -f ".venv/.installed-$hash-dev" ]; then
  echo "Setting up .venv with the [$extras] extras (first run only)..." >&2
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -U pip >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]" >&2
  find .venv -maxdepth 1 -name '.installed-*' ! -name ".installed-$hash-*" -delete
  touch ".venv/.installed-$hash-$extras"
fi
