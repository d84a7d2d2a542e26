"""Training-throughput benchmark on real PongNoFrameskip-v4: the toolkit's fast path against a textbook baseline.

    python bench.py                      # workers = cores, CPU
    python bench.py --gpu-ids 0 --workers 16 --envs-per-worker 4
    python bench.py --phases             # also: where one worker's time goes, per agent step
    python bench.py --to-score 18 --window 5 --seeds 1 2 --max-time 2400   # time to a score, from launch

Both variants run the same real workers (train.py) on the same model and hyperparameters. The
textbook baseline keeps each step's autograd graph (as the classic tool), in fp32 and the default
memory layout; the fast path keeps only the convolutions' graph while acting, replays the LSTM and
heads over each rollout in one batched pass, and runs channels-last convolutions. Variants alternate
for --rounds rounds, so the ratio holds on a noisy machine. Prints a table and writes JSON.

--to-score X launches real training runs (python main.py, one per seed, one after another) and
reports the wall-clock seconds and frames from launch until the first test game reaches X and
until the mean of --window consecutive test games does, with a per-minute timeline; several seeds
give a median and a spread. --train-args passes further main.py flags ("--lr 2e-4 --tau 0.92").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

import torch
import torch.multiprocessing as mp

from environment import describe_env
from launcher import build_run
from metrics import read_metrics
from settings import Config, check_gpus
from shared import Counters
from train import Worker, train_worker
from utils import UsageError, safe_name


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def wait_for_first_updates(workers: list, counters: Counters, timeout: float = 300.0) -> None:
    """Block until every worker has made one update (imports, env and model set up), so that the warm-up
    measures a running loop, not process start-up."""
    deadline = time.time() + timeout
    while 0 in counters.worker_updates():
        if any(not w.is_alive() for w in workers):
            raise RuntimeError("a worker exited before its first update")
        if time.time() > deadline:
            raise RuntimeError(f"workers made no update in {timeout:.0f} s")
        time.sleep(0.1)


def measure(cfg: Config, num_actions: int, warmup: float, duration: float) -> dict:
    """Start cfg.workers real training workers; count frames and updates over `duration` after `warmup`."""
    ctx = mp.get_context("spawn")
    run = build_run(cfg, num_actions, None, logger=None)
    workers = [ctx.Process(target=train_worker, args=(rank, run), daemon=True) for rank in range(cfg.workers)]
    for worker in workers:
        worker.start()
    counters = run.counters
    try:
        wait_for_first_updates(workers, counters)
        time.sleep(warmup)
        frames0, updates0, t0 = counters.worker_frames(), counters.updates, time.time()
        time.sleep(duration)
        frames1, updates1, t1 = counters.worker_frames(), counters.updates, time.time()
        peaks = [peak_rss_mb(w.pid) for w in workers]
    finally:
        run.stop.set()
        for worker in workers:
            worker.join(20)
            if worker.is_alive():
                worker.kill()
    seconds = t1 - t0
    per_worker = [(after - before) / seconds for before, after in zip(frames0, frames1)]
    return {
        "frames_per_s": sum(per_worker),
        "frames_per_s_per_worker": per_worker,
        "updates_per_s": (updates1 - updates0) / seconds,
        "peak_rss_mb_per_worker": peaks,
    }


class PhaseClock:
    """The `lap` hook of Worker.update: adds the time since the previous lap to the phase that just ended."""

    def __init__(self):
        self.totals = dict.fromkeys(Worker.PHASES, 0.0)
        self.counting = False
        self.last = time.perf_counter()

    def start(self, counting: bool) -> None:
        self.counting, self.last = counting, time.perf_counter()

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        if self.counting:
            self.totals[phase] += now - self.last
        self.last = now


def phase_times(cfg: Config, num_actions: int, updates: int) -> dict:
    """The worker's own loop (train.Worker) in this process on one thread: mean ms per agent step in each phase."""
    torch.set_num_threads(1)
    worker = Worker(0, build_run(cfg, num_actions, None, logger=None))
    clock, warmup = PhaseClock(), 5
    for update in range(warmup + updates):
        clock.start(counting=update >= warmup)
        worker.update(clock)
    worker.close()
    steps = updates * worker.steps
    return {name: seconds / steps * 1000 for name, seconds in clock.totals.items()}


def print_phases(variants: dict, num_actions: int, updates: int) -> dict:
    phases = {name: phase_times(cfg, num_actions, updates) for name, cfg in variants.items()}
    names = list(next(iter(phases.values())))
    print(f"\none worker, ms per agent step ({updates} updates after 5 of warm-up):")
    print("| variant | " + " | ".join(names) + " | total |")
    print("| --- |" + " ---: |" * (len(names) + 1))
    for variant, times in phases.items():
        print(f"| {variant} | " + " | ".join(f"{times[n]:.2f}" for n in names) + f" | {sum(times.values()):.2f} |")
    return phases


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{cpu}, {os.cpu_count()} cores" + (f", {', '.join(gpus)}" if gpus else "") + f", torch {torch.__version__}"


# ---------------------------------------------------------------- time to a score


def first_reaching(rows: list[dict], score: float, window: int) -> dict | None:
    """The first test game after which the mean of the last `window` games is >= score (window 1: that game)."""
    rewards = [row["reward"] for row in rows]
    for i in range(window - 1, len(rows)):
        if statistics.fmean(rewards[i - window + 1 : i + 1]) >= score:
            return {"seconds": rows[i]["since_launch"], "frames": int(rows[i]["frames"]), "games": i + 1}
    return None


def timeline(rows: list[dict], window: int, seconds: float) -> list[dict]:
    """One entry per minute since launch: frames and test results as of the last test game before it."""
    out = []
    for minute in range(1, int(seconds // 60) + 1):
        done = [row for row in rows if row["since_launch"] <= minute * 60]
        if not done:
            out.append({"minute": minute, "games": 0})
            continue
        recent = [row["reward"] for row in done[-window:]]
        out.append(
            {
                "minute": minute,
                "games": len(done),
                "frames": int(done[-1]["frames"]),
                "last": done[-1]["reward"],
                "mean": statistics.fmean(recent),
            }
        )
    return out


def train_to_score(args, seed: int, root: str) -> dict:
    """One real training run from launch until the score is reached or --max-time; its results as data."""
    run_dir = os.path.join(root, f"seed{seed}")
    flags = [
        *("--env", args.env, "--workers", args.workers, "--seed", seed, "--gpu-ids", *args.gpu_ids),
        *("--envs-per-worker", args.envs_per_worker, "--bf16", args.bf16),
        *("--target-score", args.to_score, "--target-window", args.window, "--max-time", args.max_time),
        *("--log-dir", run_dir, "--save-model-dir", run_dir, "--load-model-dir", run_dir),
        *shlex.split(args.train_args),
    ]
    metrics = os.path.join(run_dir, f"{safe_name(args.env)}_metrics.csv")
    os.makedirs(run_dir, exist_ok=True)
    launch = time.time()
    with open(os.path.join(run_dir, "main.out"), "w") as out:
        main_py = os.path.join(os.path.dirname(os.path.abspath(__file__)), "main.py")
        process = subprocess.Popen([sys.executable, main_py, *map(str, flags)], stdout=out, stderr=subprocess.STDOUT)
        shown, interrupted = 0, False
        try:
            while process.poll() is None:
                time.sleep(1.0)
                minute = int((time.time() - launch) // 60)
                if minute > shown and os.path.exists(metrics):
                    shown = minute
                    rows = read_metrics(metrics)
                    recent = [r["reward"] for r in rows[-args.window :]]
                    mean = f"{statistics.fmean(recent):.1f}" if recent else "-"
                    frames = f"{rows[-1]['frames'] / 1e6:.2f} M" if rows else "-"
                    print(
                        f"  seed {seed}: {minute} min, {frames} frames, {len(rows)} games, mean({args.window}) {mean}",
                        flush=True,
                    )
        except KeyboardInterrupt:  # main.py got the Ctrl-C too: it saves and stops
            interrupted = True
            process.wait()
    seconds = time.time() - launch
    rows = read_metrics(metrics) if os.path.exists(metrics) else []
    for row in rows:
        row["since_launch"] = row["wall_time"] - launch
    return {
        "seed": seed,
        "exit_code": process.returncode,
        "interrupted": interrupted,
        "seconds": seconds,
        "games": len(rows),
        "first_game": first_reaching(rows, args.to_score, 1),
        "mean": first_reaching(rows, args.to_score, args.window),
        "timeline": timeline(rows, args.window, seconds),
        "run_dir": run_dir,
    }


def reached_cell(hit: dict | None) -> str:
    return "not reached" if hit is None else f"{hit['seconds'] / 60:.1f} min, {hit['frames'] / 1e6:.2f} M frames"


def spread(runs: list[dict], key: str, field: str) -> dict | None:
    """Median, min and max over the runs that reached the score (None if none did)."""
    values = [run[key][field] for run in runs if run[key] is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def run_to_score(args) -> int:
    root = tempfile.mkdtemp(prefix="to-score-", dir=args.runs_dir)
    print(
        f"{args.env}: time to a test mean of {args.window} games >= {args.to_score:g}, seeds {args.seeds}, "
        f"{args.workers} workers, devices {args.gpu_ids}, at most {args.max_time:g} s each: {hardware()}",
        flush=True,
    )
    runs = []
    for seed in args.seeds:
        run = train_to_score(args, seed, root)
        runs.append(run)
        if run["exit_code"] != 0:
            print(f"error: seed {seed}: main.py exited with {run['exit_code']} (see {run['run_dir']}/main.out)")
        if run["interrupted"]:
            print(f"interrupted during seed {seed}: reporting the runs so far")
            break
    print(f"\n| seed | first game >= {args.to_score:g} | mean({args.window}) >= {args.to_score:g} | games |")
    print("| --- | --- | --- | ---: |")
    for run in runs:
        cells = [reached_cell(run[key]) for key in ("first_game", "mean")]
        print(f"| {run['seed']} | {cells[0]} | {cells[1]} | {run['games']} |")
    summary = {key: {f: spread(runs, key, f) for f in ("seconds", "frames")} for key in ("first_game", "mean")}
    for key, label in (("first_game", "first game"), ("mean", f"mean({args.window})")):
        s, f = summary[key]["seconds"], summary[key]["frames"]
        if s is None:
            print(f"{label} >= {args.to_score:g}: reached by no run")
            continue
        print(
            f"{label} >= {args.to_score:g}: median {s['median'] / 60:.1f} min (spread {s['min'] / 60:.1f}-"
            f"{s['max'] / 60:.1f}), median {f['median'] / 1e6:.2f} M frames, {s['runs']} of {len(runs)} runs"
        )
    for run in runs:
        print(f"\nseed {run['seed']}, per minute:\n| minute | frames | games | last | mean({args.window}) |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for entry in run["timeline"]:
            if entry["games"]:
                print(
                    f"| {entry['minute']} | {entry['frames'] / 1e6:.2f} M | {entry['games']} | {entry['last']:g} "
                    f"| {entry['mean']:.1f} |"
                )
    write_json(
        args.json,
        {
            "hardware": hardware(),
            "env": args.env,
            "to_score": args.to_score,
            "window": args.window,
            "workers": args.workers,
            "gpu_ids": args.gpu_ids,
            "train_args": args.train_args,
            "max_time_s": args.max_time,
            "runs": runs,
            "summary": summary,
        },
    )
    return 0


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"written {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="PongNoFrameskip-v4")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--gpu-ids", type=int, nargs="+", default=[-1])
    p.add_argument("--envs-per-worker", type=int, default=1, help="for the fast path (the baseline keeps 1)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast in the fast path")
    p.add_argument("--warmup", type=float, default=15.0, help="seconds counted from every worker's first update")
    p.add_argument("--duration", type=float, default=30.0, help="seconds counted per round")
    p.add_argument("--rounds", type=int, default=2, help="alternating baseline/fast rounds")
    p.add_argument("--phases", action="store_true", help="also time each phase of one worker's loop in-process")
    p.add_argument("--phase-updates", type=int, default=40, help="updates timed per variant with --phases")
    p.add_argument("--json", default="logs/bench.json", help="where to write the results")
    p.add_argument("--to-score", type=float, help="time-to-score mode: train until the test mean reaches this")
    p.add_argument("--window", type=int, default=5, help="test games averaged for --to-score")
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="one training run per seed, for --to-score")
    p.add_argument("--max-time", type=float, default=3600.0, help="seconds each --to-score run may take at most")
    p.add_argument("--train-args", default="", help='further main.py flags for --to-score runs, e.g. "--tau 0.92"')
    p.add_argument("--runs-dir", default="logs", help="where --to-score runs keep their logs and checkpoints")
    args = p.parse_args(argv)
    try:
        if args.duration <= 0 or args.warmup < 0 or args.rounds < 1 or args.phase_updates < 1 or args.workers < 1:
            raise UsageError("--duration, --rounds, --phase-updates and --workers must be positive, --warmup >= 0")
        if args.window < 1 or args.max_time <= 0:
            raise UsageError("--window and --max-time must be positive")
        check_gpus(args.gpu_ids)
        num_actions = describe_env(args.env, "config.json")
        if args.to_score is not None:
            os.makedirs(args.runs_dir, exist_ok=True)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.to_score is not None:
        return run_to_score(args)
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
            try:
                result = measure(cfg, num_actions, args.warmup, args.duration)
            except RuntimeError as e:
                print(f"error: {name}: {e} (worker logs in {log_dir})", file=sys.stderr)
                return 1
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
    phases = print_phases(variants, num_actions, args.phase_updates) if args.phases else None
    write_json(
        args.json,
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
            "phases_ms_per_step": phases,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
