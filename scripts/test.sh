#!/usr/bin/env bash
# Run the test suite (fast tests on tiny config-built models, plus the 'real' tests on the packaged models).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not real"` for the fast part only.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
exec .venv/bin/python -m pytest -ra "$@"
