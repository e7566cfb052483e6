#!/usr/bin/env bash
# The benchmark on a GPU machine that has torch but no package index (the workplace's lent machines: Python 3.12,
# torch 2.11 + CUDA 13). Two steps:
#   benchmarks/gpu.sh prepare        # here, after benchmarks/setup.sh: the peers for Python 3.12 into .gpu/
#                                    # (pure-Python copies; learn2learn's Cython parts rebuilt for 3.12;
#                                    # optree's wheel), ignored by git, carried to the GPU machine
#   benchmarks/gpu.sh run OUT [PHASES]  # there: bench.py --device cuda; PHASES (default main,compile,chunks)
#                                    # write OUT/bench_cuda{,_compile,_chunks}.{json,md}: every workload against
#                                    # the peers; compiled W1/W2; W2/W3 second order with task_chunk 1/4/8
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
    site=benchmarks/.venv/lib/python3.11/site-packages
    py312=${PY312:-python3.12}
    rm -rf .gpu && mkdir -p .gpu/site .gpu/whl
    for d in higher gym gym_notices torchopt graphviz learn2learn; do cp -r "$site/$d" .gpu/site/; done
    find .gpu/site -name __pycache__ -prune -exec rm -rf {} +
    rm -f .gpu/site/torchopt/_C*.so .gpu/site/learn2learn/data/*.so  # torchopt falls back to Python
    work=$(mktemp -d)
    $py312 -m venv "$work/v" && "$work/v/bin/pip" install -q cython setuptools
    python3 -m pip download -q --no-deps --no-binary :all: -d "$work" learn2learn==0.2.0
    tar xzf "$work"/learn2learn-0.2.0.tar.gz -C "$work"
    (cd "$work/learn2learn-0.2.0" && rm -f learn2learn/data/{meta_dataset,task_dataset,transforms}.c &&
        "$work/v/bin/cython" -3 learn2learn/data/{meta_dataset,task_dataset,transforms}.pyx &&
        "$work/v/bin/python" setup.py -q build_ext --inplace >/dev/null 2>&1)
    cp "$work"/learn2learn-0.2.0/learn2learn/data/*.so .gpu/site/learn2learn/data/
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .gpu/whl optree==0.20.0
    grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >>.git/info/exclude
    du -sh .gpu
    ;;
run)
    out=${2:?"usage: benchmarks/gpu.sh run OUT_DIR"}
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-site .gpu/whl/*.whl
    export PYTHONPATH=$PWD/.gpu/site:/tmp/gpu-site:$PWD/src PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, learn2learn, higher, torchopt, metagrad; print('torch', torch.__version__)"
    phases=",${3:-main,compile,chunks},"
    bench="python3 benchmarks/bench.py --device cuda --passes 1"
    if [[ $phases == *,main,* ]]; then
        $bench --libs metagrad,metagrad-loop,metagrad-recompute,learn2learn,higher,torchopt --results "$out/bench_cuda"
    fi
    if [[ $phases == *,compile,* ]]; then
        $bench --only W1,W2 --orders so --libs metagrad-compile --memory-steps '' --results "$out/bench_cuda_compile"
    fi
    if [[ $phases == *,chunks,* ]]; then
        chunks=metagrad-chunk1,metagrad-chunk4,metagrad-chunk8,metagrad-recompute-chunk1,metagrad-recompute-chunk4
        $bench --only W2,W3 --orders so --libs metagrad,$chunks,torchopt --results "$out/bench_cuda_chunks"
    fi
    ;;
*)
    echo "usage: benchmarks/gpu.sh prepare | run OUT_DIR" >&2
    exit 2
    ;;
esac
