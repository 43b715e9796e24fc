#!/usr/bin/env bash
# Make .venv if needed, install requirements.txt, run the test suite (CPU, a few minutes on 2 cores).
#   bash scripts/test.sh             # everything
#   bash scripts/test.sh -k resume   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
python -m pytest -q -p no:cacheprovider "$@" tests
