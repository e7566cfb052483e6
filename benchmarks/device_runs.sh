#!/usr/bin/env bash
# A segment of a long paper run (results/long, `metagrad status`) on a lent 16-core machine: the `device` tool's
# H200 host, Python 3.12 with torch 2.11, numpy, scipy, matplotlib, safetensors and tqdm, but no MuJoCo,
# gymnasium or Meta-World and no package index. Two steps:
#   benchmarks/device_runs.sh prepare [--metaworld | --omniglot]
#       here: Python 3.12 wheels of MuJoCo and gymnasium (and Meta-World) into .whl/, which git ignores and the
#       device tool carries (name .whl in `carry`); --omniglot instead zips ../shared/data/omniglot as its two
#       official zip files into .data/omniglot (carry .data; the run then takes --data-root .data/omniglot and,
#       for the GPU, --device cuda with PROCS 1)
#   benchmarks/device_runs.sh check OUT
#       there, first on a lent GPU: tests/test_device.py (training on the GPU against the CPU, a compiled Conv4
#       meta-gradient there against the CPU's loop), output in OUT/check.txt; pytest comes from the carried wheels
#   benchmarks/device_runs.sh run PROCS OUT METAGRAD_ARGS...
#       there: installs the wheels, runs `metagrad METAGRAD_ARGS...` under torchrun with PROCS processes of one
#       thread each, and packs the run's --out folder into OUT/run.tar.gz (the device tool brings at most 8
#       files back; unpack it here with `tar xzf FILES_AT/run.tar.gz`, then commit the folder)
# The command is the row's own from `metagrad status` with a --time-budget that fits the lease, e.g.
#   benchmarks/device_runs.sh run 12 "$OUT" reproduce locomotion --env cheetah-dir --algo maml-trpo \
#       --iterations 500 --seed 1 --time-budget 8 --set hvp_subsample=1.0 --set compile=true \
#       --out results/long/cheetah-dir-seed-1
# `PYTHON=.venv/bin/python benchmarks/device_runs.sh run 2 /tmp/out ...` runs the same path on this machine
# (wheels are installed only where MuJoCo and gymnasium do not import).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
case "${1:-}" in
prepare)
    if [ "${2:-}" = "--omniglot" ]; then  # the data the device does not have (../shared does not travel)
        grep -qx "/.data/" .git/info/exclude 2>/dev/null || echo "/.data/" >>.git/info/exclude
        rm -rf .data/omniglot && mkdir -p .data/omniglot
        for part in images_background images_evaluation; do
            (cd ../shared/data/omniglot && zip -qr -0 "$OLDPWD/.data/omniglot/$part.zip" "$part")
        done
        du -sh .data/omniglot
        exit 0
    fi
    grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >>.git/info/exclude
    rm -rf .whl && mkdir -p .whl
    fetch() {
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$@"
    }
    # the versions the rl extra resolves to here; the device image has numpy, absl-py, etils, cloudpickle
    fetch mujoco==3.3.0 gymnasium==1.4.0 farama-notifications==0.0.6 glfw==2.11.0 pyopengl==3.1.10
    fetch pytest==9.2.0 iniconfig==2.3.1 pluggy==1.7.0 pygments==2.21.0  # for `check`
    if [ "${2:-}" = "--metaworld" ]; then fetch metaworld==3.1.1; fi
    du -sh .whl
    ;;
check)
    out=${2:?"usage: $0 check OUT"}
    mkdir -p "$out"
    export PYTHONPATH=$PWD/src
    if ! "$PYTHON" -c "import pytest" 2>/dev/null; then  # the device: pytest from the carried wheels
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/check-site \
            .whl/pytest-*.whl .whl/iniconfig-*.whl .whl/pluggy-*.whl .whl/pygments-*.whl
        export PYTHONPATH=/tmp/check-site:$PWD/src
    fi
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    status=0
    OMP_NUM_THREADS=1 "$PYTHON" -m pytest -q -p no:cacheprovider -rs tests/test_device.py 2>&1 \
        | tee "$out/check.txt" || status=$?
    exit "$status"
    ;;
run)
    procs=${2:?"usage: $0 run PROCS OUT METAGRAD_ARGS..."}
    out=${3:?"usage: $0 run PROCS OUT METAGRAD_ARGS..."}
    shift 3
    run_dir=""
    prev=""
    for arg in "$@"; do
        if [ "$prev" = "--out" ]; then run_dir=$arg; fi
        case "$arg" in --out=*) run_dir=${arg#--out=} ;; esac
        prev=$arg
    done
    if [ -z "$run_dir" ]; then
        echo "$0: give the run's --out folder (the row's own), so that its checkpoint is resumed and packed" >&2
        exit 2
    fi
    export PYTHONPATH=$PWD/src
    if ! "$PYTHON" -c "import mujoco, gymnasium" 2>/dev/null; then  # the device: install the carried wheels
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl
        export PYTHONPATH=/tmp/site:$PWD/src
    fi
    export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 MUJOCO_GL=${MUJOCO_GL:-disable}  # no rendering: no EGL or GLX needed
    "$PYTHON" -c "import torch, mujoco, gymnasium; print('torch', torch.__version__, 'mujoco', mujoco.__version__, \
'cores', __import__('os').cpu_count())"
    mkdir -p "$out"
    status=0
    "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$procs" -m metagrad "$@" --no-progress \
        || status=$?
    if [ -d "$run_dir" ]; then
        tar czf "$out/run.tar.gz" "$run_dir"
        echo "packed $run_dir into $out/run.tar.gz ($(du -h "$out/run.tar.gz" | cut -f1))"
    fi
    echo "metagrad exit code $status"
    exit "$status"
    ;;
*)
    sed -n '2,20p' "$0"
    exit 2
    ;;
esac
