#!/usr/bin/env bash
# The test command of the README (and of CI): install what is needed, then run the default test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the long tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup-venv.sh
source scripts/env.sh
exec python -m pytest "$@"
