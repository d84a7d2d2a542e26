#!/usr/bin/env bash
# A3G on one GPU box: the GPU tests, and nvidia-smi's processes during an A3G run under MPS (expected: one MPS
# server, each process on its own GPU only) and during one with CUDA_VISIBLE_DEVICES=$GPU and --mps on;
# frames/s side by side (16 CPU workers; 16 A3G workers without MPS; with MPS on the fast path, with
# --replay-convs and with --cuda-graph; with MPS and 4 envs per worker; with MPS in bf16, on each acting
# path); one worker's phases (ms and operations per agent step) on each acting path; and one time-to-score
# run to a 5-game test mean of 18 with the defaults (under MPS with the CUDA graph: 3.6 min on an H200 on
# 2026-12-04). Prints a table and keeps every log and JSON in OUT. PARTS picks what runs. On that H200, with
# MPS serving, a 16-worker bench took about 26 s per variant, so run the parts as separate calls in this order,
# each well inside a 10-minute call and rerunnable alone: PARTS=tests (about 6 minutes), PARTS="speed phases"
# (about 5), PARTS=score (SCORE_TIME + 1 minute).
#
#   bash benchmarks/bench_gpu.sh [OUT]          # OUT defaults to logs/bench_gpu
#   GPU=0 WORKERS=16 SECONDS_PER=10 SCORE_TIME=180 PYTHON=python3 bash benchmarks/bench_gpu.sh
#   PARTS="speed phases" bash benchmarks/bench_gpu.sh   # of: tests speed phases score
#   SCORE_ARGS="--cuda-graph off" bash benchmarks/bench_gpu.sh   # the score run with further main.py flags
#   SCORE_CLASSIC=1 bash benchmarks/bench_gpu.sh   # also the classic --tau 1.0 --lr 1e-4, side by side
#                                                 # (about 3 more minutes): which defaults suit 16 workers
#
# It needs the repo's requirements and a CUDA build of torch; no MPS daemon need run (the runs start
# their own, --mps auto). Numbers go to docs/benchmarks.md with the date, commit and hardware it prints.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-logs/bench_gpu}
GPU=${GPU:-0}
WORKERS=${WORKERS:-16}
SECONDS_PER=${SECONDS_PER:-10}
SCORE_TIME=${SCORE_TIME:-180}
SCORE_ARGS=${SCORE_ARGS:-}
PARTS=${PARTS:-tests speed phases score}
PY=${PYTHON:-python}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
exec > >(tee -a "$OUT/bench_gpu.log") 2>&1
part() { [[ " $PARTS " == *" $1 "* ]]; }
GRAPH=graph
[ "$GPU" = -1 ] && GRAPH=  # GPU=-1 checks the script's flow on a CPU, where no CUDA graph can be captured

echo "== $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), parts: $PARTS"
nvidia-smi --query-gpu=index,name,driver_version,compute_mode,memory.total --format=csv || true

smi_during_run() {  # NAME FLAGS...: main.py with FLAGS until it trains, nvidia-smi's processes then, then SIGTERM
    local name=$1
    shift
    local dir="$OUT/$name"
    mkdir -p "$dir"
    echo "== nvidia-smi during an A3G run, $name:${CUDA_VISIBLE_DEVICES+ CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES} $*"
    $PY main.py --env PongNoFrameskip-v4 --progress-interval 1 --log-dir "$dir" --save-model-dir "$dir" "$@" \
        >"$dir/run.log" 2>&1 &
    local run=$!
    for _ in $(seq 180); do
        grep -q "| updates [1-9]" "$dir/run.log" && break
        kill -0 "$run" 2>/dev/null || break
        sleep 1
    done
    { nvidia-smi; nvidia-smi --query-compute-apps=pid,process_name,gpu_uuid,used_memory --format=csv; } \
        >"$dir/nvidia-smi.txt" 2>&1
    kill -TERM "$run" 2>/dev/null
    wait "$run"
    echo "main.py exited with code $? (SIGTERM once it trained); its MPS line and the processes nvidia-smi saw:"
    grep -m1 -e "CUDA MPS" -e "--mps" "$dir/run.log"
    $PY - "$dir/nvidia-smi.txt" <<'PYTHON'
import sys
from collections import defaultdict

lines = open(sys.argv[1]).read().splitlines()
head = next((i for i, line in enumerate(lines) if line.startswith("pid, process_name")), None)
if head is None:
    sys.exit(print("  no nvidia-smi process list (see the file)") or 0)
gpus, servers = defaultdict(set), set()
for row in lines[head + 1 :]:
    pid, name, uuid = (field.strip() for field in row.split(",")[:3])
    gpus[pid].add(uuid)
    if name.endswith("nvidia-cuda-mps-server"):
        servers.add((pid, uuid))
several = {pid: sorted(uuids) for pid, uuids in gpus.items() if len(uuids) > 1}
print(f"  {len(gpus)} processes; MPS servers: {len(servers)} {sorted(servers)} (expected: one per GPU used)")
print(f"  processes on more than one GPU: {several or 'none'} (expected: none)")
PYTHON
}

if part tests; then
    echo "== GPU tests"
    $PY -m pytest -q --durations=10 tests/test_cuda.py tests/test_mps.py
    VISIBLE_IDS=0
    [ "$GPU" = -1 ] && VISIBLE_IDS=-1
    smi_during_run a3g_smi --workers "$WORKERS" --gpu-ids "$GPU" --mps on
    CUDA_VISIBLE_DEVICES=$GPU smi_during_run a3g_visible --workers "$WORKERS" --gpu-ids "$VISIBLE_IDS" --mps on
fi

bench() {
    local name=$1
    shift
    echo "== frames/s: $name"
    $PY -m benchmarks.bench --workers "$WORKERS" --warmup 5 --duration "$SECONDS_PER" --rounds 1 \
        --json "$OUT/$name.json" "$@"
}
if part speed; then
    bench cpu --gpu-ids -1 --variants fast
    bench a3g --gpu-ids "$GPU" --mps off --variants fast
    bench a3g_mps --gpu-ids "$GPU" --mps on --variants fast replay $GRAPH
    bench a3g_mps_k4 --gpu-ids "$GPU" --mps on --envs-per-worker 4 --variants fast $GRAPH
    bench a3g_mps_bf16 --gpu-ids "$GPU" --mps on --precisions bf16 --variants fast replay $GRAPH
fi

if part phases; then
    echo "== one A3G worker's phases per agent step (ms, the device waited for at each phase's end; operations)"
    $PY -m benchmarks.bench --variants fast replay $GRAPH --workers 1 --gpu-ids "$GPU" --warmup 2 --duration 3 \
        --rounds 1 --phases --phase-updates 40 --json "$OUT/phases.json"
fi

if part score; then
    echo "== time to a 5-game test mean of 18: main.py --workers $WORKERS --gpu-ids $GPU $SCORE_ARGS"
    variants=(" $SCORE_ARGS")  # the leading space: argparse takes a lone "--flag" for an option of its own
    [ -n "${SCORE_CLASSIC:-}" ] && variants+=(" $SCORE_ARGS --tau 1.0 --lr 1e-4")
    $PY -m benchmarks.bench_score --workers "$WORKERS" --gpu-ids "$GPU" --score 18 --window 5 --milestones 0 10 \
        --max-time "$SCORE_TIME" --runs-dir "$OUT/runs" --json "$OUT/score.json" --train-args "${variants[@]}"
fi

echo "== summary"
$PY - "$OUT" <<'PYTHON'
import json, os, sys

out = sys.argv[1]
rows = {}
for name in ("cpu", "a3g", "a3g_mps", "a3g_mps_k4", "a3g_mps_bf16"):
    path = os.path.join(out, f"{name}.json")
    if os.path.exists(path):
        with open(path) as f:
            for variant, summary in json.load(f)["summary"].items():
                rows[f"{name} {variant}"] = summary["frames_per_s"]
base = rows.get("cpu fast")
print("| workers, acting path | frames/s | x CPU |")
print("| --- | ---: | ---: |")
for name, fps in rows.items():
    print(f"| {name} | {fps:,.0f} | {fps / base:.2f} |" if base else f"| {name} | {fps:,.0f} | |")
score = os.path.join(out, "score.json")
if os.path.exists(score):
    with open(score) as f:
        print(json.dumps(json.load(f)["summary"], indent=1))
PYTHON
