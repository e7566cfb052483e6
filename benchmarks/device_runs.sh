#!/usr/bin/env bash
# A segment of a long paper run (results/long, `metagrad status`) on a lent 16-core machine: the `device` tool's
# H200 host, Python 3.12 with torch 2.11, numpy, scipy, matplotlib, safetensors and tqdm, but no MuJoCo,
# gymnasium or Meta-World and no package index. Its verbs:
#   benchmarks/device_runs.sh prepare [--metaworld | --omniglot]
#       here: Python 3.12 wheels of MuJoCo and gymnasium (and Meta-World) into .whl/, which git ignores and the
#       device tool carries (name .whl in `carry`); --omniglot instead zips ../shared/data/omniglot as its two
#       official zip files into .data/omniglot (carry .data; the run then takes --data-root .data/omniglot and,
#       for the GPU, --device cuda with PROCS 1)
#   benchmarks/device_runs.sh check OUT
#       there, first on a lent GPU: tests/test_device.py (training on the GPU against the CPU, a compiled Conv4
#       meta-gradient there against the CPU's loop), output in OUT/check.txt (13 passed on an H200, 2026-12-04)
#   benchmarks/device_runs.sh rows OUT MINUTES DEADLINE "METAGRAD_ARGS" ["METAGRAD_ARGS"...]
#       there, on the GPU: each quoted command (with its --out) as its own process side by side, --time-budget
#       MINUTES each; any still running DEADLINE seconds after the start gets SIGTERM (a checkpoint while training;
#       evaluation just ends), then all --out folders are packed into OUT/runs.tar.gz. On one H200, three Omniglot
#       MAML rows this way took 16.5 / 25 / 61 ms per iteration (5-way 1-shot / 5-shot / 20-way), e.g.
#         benchmarks/device_runs.sh rows "$OUT" 5 465 "reproduce omniglot --algo maml --ways 5 --shots 1 \
#             --device cuda --compile --data-root .data/omniglot --out results/long/omniglot-maml-1shot" ...
#   benchmarks/device_runs.sh slim | unslim
#       here, around a device call: the working tree travels only up to 64 MiB and results/ holds more, so `slim`
#       takes results/ out of git's index and ignores it (the files stay; carry the row folders the call needs),
#       `unslim` puts both back as they were
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
out_folder() {  # the --out of a metagrad command line: the run folder that is resumed and packed
    local prev="" found=""
    for arg in "$@"; do
        if [ "$prev" = "--out" ]; then found=$arg; fi
        case "$arg" in --out=*) found=${arg#--out=} ;; esac
        prev=$arg
    done
    if [ -z "$found" ]; then
        echo "$0: give the run's --out folder (the row's own), so that its checkpoint is resumed and packed" >&2
        exit 2
    fi
    echo "$found"
}
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
rows)
    out=${2:?"usage: $0 rows OUT MINUTES DEADLINE ARGS..."}
    minutes=${3:?"usage: $0 rows OUT MINUTES DEADLINE ARGS..."}
    deadline=${4:?"usage: $0 rows OUT MINUTES DEADLINE ARGS..."}
    shift 4
    export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
    mkdir -p "$out"
    specs=() dirs=()
    for spec in "$@"; do  # every command checked before any starts: none is left running unwatched
        read -ra words -d '' <<<"$spec" || true  # a command quoted over several lines is read whole
        dirs+=("$(out_folder "${words[@]}")")
        specs+=("$spec")
    done
    start=$(date +%s)
    pids=()
    for spec in "${specs[@]}"; do
        read -ra words -d '' <<<"$spec" || true
        log="$out/row${#pids[@]}.log"
        "$PYTHON" -m metagrad "${words[@]}" --time-budget "$minutes" --no-progress >"$log" 2>&1 &
        pids+=("$!")
        echo "row ${#pids[@]}: pid $! -> ${dirs[${#pids[@]} - 1]} (log $log)"
    done
    while [ $(($(date +%s) - start)) -lt "$deadline" ] && kill -0 "${pids[@]}" 2>/dev/null; do sleep 2; done
    for pid in "${pids[@]}"; do  # kill -0 above is true while any one runs
        if kill -TERM "$pid" 2>/dev/null; then echo "pid $pid still running at $(($(date +%s) - start)) s: SIGTERM"; fi
    done
    for _ in $(seq 30); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 1; done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null && echo "pid $pid killed after 30 s more"; done
    status=0
    for i in "${!pids[@]}"; do
        rc=0
        wait "${pids[$i]}" || rc=$?
        if [ "$rc" -ne 0 ]; then status=$rc; fi
        echo "row $((i + 1)): exit $rc; $(grep -h "meta-iterations" "$out/row$i.log" || tail -n 1 "$out/row$i.log")"
    done
    existing=()
    for dir in "${dirs[@]}"; do if [ -d "$dir" ]; then existing+=("$dir"); fi; done
    if [ ${#existing[@]} -gt 0 ]; then
        tar czf "$out/runs.tar.gz" "${existing[@]}"
        echo "packed ${#existing[@]} folders into $out/runs.tar.gz after $(($(date +%s) - start)) s"
    else
        echo "no run folder to pack (every row failed before writing one)"
    fi
    exit "$status"
    ;;
slim)
    saved=$(git rev-parse --git-path metagrad-slim)
    exclude=$(git rev-parse --git-path info/exclude)
    if [ -e "$saved" ]; then
        echo "$0: results/ is already out of the index (since commit $(head -n 1 "$saved")); run '$0 unslim' first" >&2
        exit 2
    fi
    mkdir -p "$(dirname "$exclude")" && touch "$exclude"
    git ls-files -s -z -- results >"$saved.index"  # the index's own entries, staged changes included
    if grep -qx "/results/" "$exclude"; then line=kept; else line=added; fi
    git rm -r -q --cached -f results
    if [ "$line" = added ]; then echo "/results/" >>"$exclude"; fi
    printf '%s\n%s\n' "$(git rev-parse HEAD)" "$line" >"$saved"
    echo "results/ out of git's index and ignored until '$0 unslim' (commit nothing meanwhile); carry the row" \
        "folders the call needs"
    ;;
unslim)
    saved=$(git rev-parse --git-path metagrad-slim)
    exclude=$(git rev-parse --git-path info/exclude)
    if [ ! -e "$saved" ]; then
        echo "$0: nothing to undo: '$0 slim' was not run (or was undone)" >&2
        exit 2
    fi
    then_head=$(sed -n 1p "$saved")
    if [ "$(git rev-parse HEAD)" != "$then_head" ]; then
        echo "$0: a commit was made while results/ was out of the index, and it may record results/ as deleted;" \
            "look at 'git show --stat HEAD', undo it with 'git reset --soft $then_head' if so, then run unslim" >&2
        exit 2
    fi
    git rm -r -q --cached --ignore-unmatch results
    git update-index -z --index-info <"$saved.index"
    if [ "$(sed -n 2p "$saved")" = added ]; then sed -i '\|^/results/$|d' "$exclude"; fi
    rm -f "$saved" "$saved.index"
    echo "results/ back in git's index as it was"
    ;;
run)
    procs=${2:?"usage: $0 run PROCS OUT METAGRAD_ARGS..."}
    out=${3:?"usage: $0 run PROCS OUT METAGRAD_ARGS..."}
    shift 3
    run_dir=$(out_folder "$@")
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
    sed -n '2,33p' "$0"
    exit 2
    ;;
esac
