#!/usr/bin/env bash
# Creates benchmarks/.venv with metagrad and its peers (learn2learn 0.2.0, higher, TorchOpt) for side-by-side
# timings. What it takes on Python 3.11 with the CPU torch 2.13.0 (see ../../shared/DESIGN.md):
#  - learn2learn 0.2.0's sdist ships C files generated before CPython 3.11: regenerate them from the .pyx
#    with a current Cython, then install --no-deps --no-build-isolation, plus its import-time needs;
#  - PyPI's torchvision (imported by learn2learn) fails beside the CPU torch ("operator torchvision::nms
#    does not exist"): the two register_fake decorators of its _meta_registrations.py are commented out,
#    in this venv only.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
$PY -m venv $VENV
$VENV/bin/pip install -q torch==2.13.0
echo "torch==2.13.0" > $VENV/constraints.txt
$VENV/bin/pip install -q -c $VENV/constraints.txt -e '..' higher torchopt cython setuptools wheel numpy \
    requests tqdm scipy gym torchvision
work=$(mktemp -d)
$VENV/bin/pip download -q --no-deps --no-binary :all: -d "$work" learn2learn==0.2.0
tar xzf "$work"/learn2learn-0.2.0.tar.gz -C "$work"
src="$work/learn2learn-0.2.0"
rm -f "$src"/learn2learn/data/{meta_dataset,task_dataset,transforms}.c
$VENV/bin/cython -3 "$src"/learn2learn/data/{meta_dataset,task_dataset,transforms}.pyx
$VENV/bin/pip install -q --no-deps --no-build-isolation "$src"
meta=$($VENV/bin/python -c "import importlib.util as u; print(u.find_spec('torchvision').submodule_search_locations[0])")/_meta_registrations.py
sed -i 's/^@torch.library.register_fake("torchvision::\(q\?nms\)")/# (benchmark venv) removed: register_fake \1/' "$meta"
$VENV/bin/python -c "import learn2learn, higher, torchopt, metagrad; print('peers ready:', learn2learn.__version__, torchopt.__version__)"
