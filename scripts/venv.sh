# Sourced by demo.sh and test.sh: create .venv with Python 3.11+ if missing, install requirements.txt once
# (again only when it changes), and activate it.
PYTHON_BIN="${PYTHON_BIN:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $("$PYTHON_BIN" --version)"
  "$PYTHON_BIN" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
stamp=.venv/.requirements-installed
if [ ! -f "$stamp" ] || ! cmp -s requirements.txt "$stamp"; then
  echo "installing requirements.txt into .venv (PyTorch is large: the first time takes a few minutes)"
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -r requirements.txt
  cp requirements.txt "$stamp"
fi
