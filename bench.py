"""Training-throughput benchmark on real PongNoFrameskip-v4: the toolkit's fast path against a textbook baseline.

    python bench.py                      # workers = cores, CPU
    python bench.py --gpu-ids 0 --workers 16 --envs-per-worker 4

Both variants run the same real workers (train.py) on the same model and hyperparameters. The
textbook baseline keeps each step's autograd graph (as the classic tool), in fp32 and the default
memory layout; the fast path acts without autograd and replays each rollout in one batched pass,
with channels-last convolutions. Variants alternate for --rounds rounds, so the ratio holds on a noisy
machine. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace

import torch
import torch.multiprocessing as mp

from environment import describe_env
from model import A3Clstm
from shared_optim import make_optimizer
from train import train_worker
from utils import Config, Counters, StopFlag, UsageError, check_gpus


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(cfg: Config, num_actions: int, warmup: float, duration: float) -> dict:
    """Start cfg.workers real training workers; count frames and updates over `duration` after `warmup`."""
    ctx = mp.get_context("spawn")
    model = A3Clstm(1, num_actions, cfg.hidden_size).share_memory()
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.amsgrad)
    counters, stop = Counters(cfg.workers), StopFlag()
    workers = [
        ctx.Process(target=train_worker, args=(rank, cfg, model, optimizer, counters, stop, os.getpid()), daemon=True)
        for rank in range(cfg.workers)
    ]
    for worker in workers:
        worker.start()
    try:
        time.sleep(warmup)
        frames0, updates0, t0 = counters.table[0].clone(), counters.updates, time.time()
        time.sleep(duration)
        frames1, updates1, t1 = counters.table[0].clone(), counters.updates, time.time()
        peaks = [peak_rss_mb(w.pid) for w in workers]
    finally:
        stop.set()
        for worker in workers:
            worker.join(20)
            if worker.is_alive():
                worker.kill()
    seconds = t1 - t0
    per_worker = ((frames1 - frames0)[: cfg.workers].double() / seconds).tolist()
    return {
        "frames_per_s": sum(per_worker),
        "frames_per_s_per_worker": per_worker,
        "updates_per_s": (updates1 - updates0) / seconds,
        "peak_rss_mb_per_worker": peaks,
    }


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{cpu}, {os.cpu_count()} cores" + (f", {', '.join(gpus)}" if gpus else "") + f", torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="PongNoFrameskip-v4")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--gpu-ids", type=int, nargs="+", default=[-1])
    p.add_argument("--envs-per-worker", type=int, default=1, help="for the fast path (the baseline keeps 1)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast in the fast path")
    p.add_argument("--warmup", type=float, default=15.0, help="seconds before counting")
    p.add_argument("--duration", type=float, default=30.0, help="seconds counted per round")
    p.add_argument("--rounds", type=int, default=2, help="alternating baseline/fast rounds")
    p.add_argument("--json", default="logs/bench.json", help="where to write the results")
    args = p.parse_args(argv)
    try:
        check_gpus(args.gpu_ids)
        num_actions = describe_env(args.env, "config.json")
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log_dir = tempfile.mkdtemp(prefix="bench-logs-")  # worker error logs stay out of the user's training log
    common = Config(env=args.env, workers=args.workers, gpu_ids=tuple(args.gpu_ids), log_dir=log_dir)
    variants = {
        "textbook": replace(common, textbook=True, channels_last=False),
        "fast": replace(common, envs_per_worker=args.envs_per_worker, bf16=args.bf16),
    }
    print(f"{args.env}, {args.workers} workers, devices {args.gpu_ids}: {hardware()}", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for name, cfg in variants.items():
            result = measure(cfg, num_actions, args.warmup, args.duration)
            runs[name].append(result)
            print(f"round {round_ + 1}: {name:8s} {result['frames_per_s']:8.0f} frames/s", flush=True)
    summary = {}
    for name, results in runs.items():
        summary[name] = {
            "frames_per_s": statistics.fmean(r["frames_per_s"] for r in results),
            "frames_per_s_per_worker": statistics.fmean(
                statistics.fmean(r["frames_per_s_per_worker"]) for r in results
            ),
            "updates_per_s": statistics.fmean(r["updates_per_s"] for r in results),
            "peak_rss_mb_per_worker": max(max(r["peak_rss_mb_per_worker"]) for r in results),
        }
    ratio = summary["fast"]["frames_per_s"] / summary["textbook"]["frames_per_s"]
    print("\n| variant | frames/s | frames/s per worker | updates/s | peak RSS per worker (MB) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, s in summary.items():
        print(
            f"| {name} | {s['frames_per_s']:.0f} | {s['frames_per_s_per_worker']:.0f} | {s['updates_per_s']:.1f} "
            f"| {s['peak_rss_mb_per_worker']:.0f} |"
        )
    print(f"\nfast / textbook frames/s: {ratio:.2f}x")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(
            {
                "hardware": hardware(),
                "env": args.env,
                "workers": args.workers,
                "gpu_ids": args.gpu_ids,
                "envs_per_worker": args.envs_per_worker,
                "bf16": args.bf16,
                "warmup_s": args.warmup,
                "duration_s": args.duration,
                "rounds": runs,
                "summary": summary,
                "ratio": ratio,
            },
            f,
            indent=2,
        )
    print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
