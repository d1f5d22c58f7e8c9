#!/usr/bin/env bash
# The test command of the README (and of CI): install what is needed, lint, then run both test tiers.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not integration"` for the unit tier alone
# (no Ray, Serve or subprocess jobs) or `bash scripts/test.sh tests/test_losses.py`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup-venv.sh
source scripts/env.sh
ruff check .
exec python -m pytest --durations=15 "$@"
