#!/usr/bin/env bash
# Make .venv if needed, install requirements.txt, run the test suite (CPU, a few minutes on 2 cores).
#   bash scripts/test.sh                 # everything (what CI runs)
#   bash scripts/test.sh -m "not slow"   # the inner loops alone: no end-to-end runs, about 35 s
#   bash scripts/test.sh -k resume       # extra arguments go to pytest (-n 0: in one process)
# Two pytest processes (pytest-xdist), each test file whole in one of them (--dist loadfile: a file's
# module-scoped runs are made once); one thread each (tests/conftest.py sets OMP_NUM_THREADS=1).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile "$@" tests
