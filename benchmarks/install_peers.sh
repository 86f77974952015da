#!/usr/bin/env bash
# The peers of benchmarks/train_throughput.py and benchmarks/serve_adapters.py, in their own venv (never a
# project dependency): LLaMA-Factory from PyPI on the same torch build as the project (torch 2.13.0, CPU wheel
# here). TRL needs no install: it runs from the project's .venv.
#
#   bash benchmarks/install_peers.sh [VENV]        (default var/peers/llamafactory)
#
# LLaMA-Factory drags in torchvision and torchaudio; no wheel of either matches torch 2.13, and a mismatched one
# breaks `import torch` users (torchvision registers C++ operators at import). Both are removed. LLaMA-Factory
# imports torchaudio at start-up for its audio plugin, which a text-only run never calls, so the venv gets an
# empty `torchaudio` module in its place.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-var/peers/llamafactory}
PYTHON=${PYTHON:-python3.11}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
LF_SPEC=${LF_SPEC:-llamafactory}

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "$TORCH_SPEC"
# The torch pin stays: whatever llamafactory asks for, the venv keeps the project's torch build.
echo "$TORCH_SPEC" > "$VENV/torch-pin.txt"
"$VENV/bin/pip" install --quiet "$LF_SPEC" -c "$VENV/torch-pin.txt"
"$VENV/bin/pip" uninstall --quiet --yes torchvision torchaudio 2>/dev/null || true
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p "$SITE/torchaudio"
printf '"""An empty stand-in (benchmarks/install_peers.sh): LLaMA-Factory imports torchaudio at start-up only."""\n' \
    > "$SITE/torchaudio/__init__.py"
"$VENV/bin/python" -c "import torch, transformers, peft, llamafactory; print('peers ready:', 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'llamafactory', llamafactory.__version__)"
