#!/usr/bin/env bash
# Creates benchmarks/.venv-maml-rl for pytorch-maml-rl (github tristandeleu/pytorch-maml-rl, not on the package
# index; give its checkout to navigation_speed.py --maml-rl PATH). What it needs on Python 3.11 with torch 2.13:
# numpy<2 and gym 0.17.3, built from its sdist with setuptools<70 (newer ones reject its metadata); torch.lstsq,
# gone from torch, is supplied by maml_rl_speed.py at run time, so the checkout stays as it is.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv-maml-rl
$PY -m venv $VENV
$VENV/bin/pip install -q torch==2.13.0 "numpy<2" tqdm pyyaml wheel
$VENV/bin/pip install -q "setuptools<70" 2>/dev/null || true  # torch's metadata asks for a newer one; gym's build needs this
$VENV/bin/pip install -q --no-build-isolation gym==0.17.3
# maml_rl_cheetah.py steps metagrad's half-cheetah (src/ on its path): metagrad's own imports and MuJoCo's
$VENV/bin/pip install -q "mujoco==3.3.0" "gymnasium[mujoco]>=1.1" "safetensors>=0.4" "matplotlib>=3.7" scipy pillow
$VENV/bin/python -c "import gym, torch, numpy; print('pytorch-maml-rl environment ready: gym', gym.__version__, 'torch', torch.__version__, 'numpy', numpy.__version__)"
