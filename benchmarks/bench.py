"""Training-throughput benchmark on real PongNoFrameskip-v4: the toolkit's fast path against a textbook baseline.

    python -m benchmarks.bench                      # workers = cores, CPU
    python -m benchmarks.bench --gpu-ids 0 --workers 16 --envs-per-worker 4
    python -m benchmarks.bench --phases             # also: where one worker's time goes, per agent step
    python -m benchmarks.bench --gpu-ids 0 --workers 16 --variants fast --mps off   # A3G without MPS
    python -m benchmarks.bench --gpu-ids 0 --workers 16 --variants fast replay graph  # the acting paths
    python -m benchmarks.bench --variants textbook fast replay --precisions fp32 bf16  # fp32 and bf16 side by side

Every variant runs the same real workers (train.py) on the same model and hyperparameters. The
textbook baseline keeps each step's autograd graph (as the classic tool), in fp32 and the default
memory layout; the fast path keeps only the convolutions' graph while acting, replays the LSTM and
heads over each rollout in one batched pass, and runs channels-last convolutions (--replay-convs off);
`replay` is the fast path with --replay-convs on (acting without autograd, the convolutions recomputed in
one pass at the update) and `graph` with --cuda-graph (GPU workers only); each of these three runs once per
--precisions entry (`fast bf16` is the fast path with --bf16 on --replay-convs off). Variants alternate for
--rounds rounds, so their ratios hold on a noisy machine. Prints a table and writes JSON. Workers that share
a GPU get the CUDA MPS that --mps asks for, as main.py's do (mps.py). --phases also counts the tensor
operations each phase dispatches per agent step: on a GPU each is a kernel launch or a copy that the host
pays for.

Time to a score, what a user waits for, is bench_score.py's.
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
from collections import Counter
from dataclasses import replace

import torch
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

from cli import Parser, add_config_flags, add_run_flags, run_command
from environment import describe_env
from mps import gpu_sharing, shared_gpus
from process import use_device
from run_setup import build_run
from run_state import Counters
from settings import Config, check_values, cpu_bf16_units
from train import Worker, train_worker
from utils import UsageError, atomic_write

VARIANTS = ("textbook", "fast", "replay", "graph")
PRECISIONS = ("fp32", "bf16")


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


PHASES = ("pull weights", "act + env", "losses", "backward + optimizer")  # Worker.update's steps, in order


def update_by_phases(worker: Worker, lap) -> None:
    """Worker.update, its steps one by one, calling `lap(phase)` as each of PHASES ends."""
    worker.pull()
    lap(PHASES[0])
    rollout = worker.act()
    lap(PHASES[1])
    losses = worker.losses(rollout)
    lap(PHASES[2])
    worker.learn(losses)
    lap(PHASES[3])


class PhaseClock:
    """A `lap` of update_by_phases: adds the time since the previous lap to the phase that just ended.
    On a GPU each lap first waits for the device, so that a phase's queued kernels count in that phase."""

    def __init__(self, device: torch.device):
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.counting = False
        self.wait = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else lambda: None
        self.last = time.perf_counter()

    def start(self, counting: bool) -> None:
        self.counting, self.last = counting, time.perf_counter()

    def __call__(self, phase: str) -> None:
        self.wait()
        now = time.perf_counter()
        if self.counting:
            self.totals[phase] += now - self.last
        self.last = now


class OpCount(TorchDispatchMode):
    """Counts the tensor operations dispatched while active (the autograd engine's backward ones too), by name."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


class PhaseOps:
    """A `lap` of update_by_phases that counts each phase's operations (views excluded: they launch nothing)."""

    VIEWS = frozenset(
        (
            "view",
            "_unsafe_view",
            "select",
            "slice",
            "t",
            "detach",
            "split",
            "unsqueeze",
            "squeeze",
            "expand",
            "permute",
            "transpose",
            "alias",
            "as_strided",
            "unbind",
            "chunk",
            "lift_fresh",
        )
    )

    def __init__(self):
        self.totals = dict.fromkeys(PHASES, 0)
        self.mode = OpCount()

    def start(self) -> None:
        self.mode = OpCount()
        self.mode.__enter__()

    def __call__(self, phase: str) -> None:
        self.mode.__exit__(None, None, None)
        self.totals[phase] += sum(n for name, n in self.mode.ops.items() if name not in self.VIEWS)
        if phase != PHASES[-1]:
            self.start()


def phase_times(cfg: Config, num_actions: int, updates: int, count_updates: int = 3) -> dict:
    """The worker's own loop (train.Worker) in this process on one thread, per agent step in each phase: mean ms
    ("ms"), and operations dispatched ("ops"), counted over `count_updates` further updates (apart from the
    timed ones: counting slows every operation down)."""
    torch.set_num_threads(1)
    use_device(cfg.device_for(0))
    worker = Worker(0, build_run(cfg, num_actions, None, logger=None))
    clock, warmup = PhaseClock(worker.device), 5
    for update in range(warmup + updates):
        clock.start(counting=update >= warmup)
        update_by_phases(worker, clock)
    ops = PhaseOps()
    for _ in range(count_updates):
        ops.start()
        update_by_phases(worker, ops)
    worker.close()
    steps = updates * worker.steps
    return {
        "ms": {name: seconds / steps * 1000 for name, seconds in clock.totals.items()},
        "ops": {name: n / max(1, count_updates * worker.steps) for name, n in ops.totals.items()},
    }


def print_phases(variants: dict, num_actions: int, updates: int, counted: int = 3) -> dict:
    phases = {name: phase_times(cfg, num_actions, updates, counted) for name, cfg in variants.items()}
    names = list(PHASES)
    for key, what, digits in (("ms", "ms", 2), ("ops", "operations dispatched (views excluded)", 1)):
        print(f"\none worker, {what} per agent step ({updates} updates timed after 5 of warm-up, {counted} counted):")
        print("| variant | " + " | ".join(names) + " | total |")
        print("| --- |" + " ---: |" * (len(names) + 1))
        for variant, both in phases.items():
            row = both[key]
            cells = " | ".join(f"{row[n]:.{digits}f}" for n in names)
            print(f"| {variant} | {cells} | {sum(row.values()):.{digits}f} |")
    return phases


def hardware() -> str:
    """The machine a figure was measured on: CPU model, its native bf16 units (they decide --bf16 auto and
    its speed), cores, GPUs and torch."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    units = cpu_bf16_units()
    cpu += f" ({'native bf16: ' + ', '.join(units) if units else 'no native bf16'})"
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{cpu}, {os.cpu_count()} cores" + (f", {', '.join(gpus)}" if gpus else "") + f", torch {torch.__version__}"


def write_json(path: str, payload: dict) -> None:
    """Write `payload` all at once: a benchmark stopped mid-write keeps the last results."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as f:
        json.dump(payload, f, indent=2)
    print(f"written {path}")


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(p)
    p.add_argument("--envs-per-worker", type=int, default=1, help="for the fast path (the baseline keeps 1)")
    p.add_argument(
        "--precisions",
        nargs="+",
        choices=PRECISIONS,
        default=["fp32"],
        help="the fast path and its variants in each: fp32 bf16 measures both side by side (the textbook stays fp32)",
    )
    p.add_argument("--warmup", type=float, default=15.0, help="seconds counted from every worker's first update")
    p.add_argument("--duration", type=float, default=30.0, help="seconds counted per round")
    p.add_argument("--rounds", type=int, default=2, help="alternating baseline/fast rounds")
    p.add_argument("--phases", action="store_true", help="also time each phase of one worker's loop in-process")
    p.add_argument("--phase-updates", type=int, default=40, help="updates timed per variant with --phases")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=["textbook", "fast"], help="what to measure")
    add_config_flags(p, Config, ("mps",))
    p.add_argument("--json", default="logs/bench.json", help="where to write the results")
    args = p.parse_args(argv)
    return run_command(lambda: benchmark(args))


def benchmark(args) -> int:
    """Check the flags (a UsageError before anything starts), then run the rounds and report."""
    if args.duration <= 0 or args.warmup < 0 or args.rounds < 1 or args.phase_updates < 1 or args.workers < 1:
        raise UsageError("--duration, --rounds, --phase-updates and --workers must be positive, --warmup >= 0")
    log_dir = tempfile.mkdtemp(prefix="bench-logs-")  # worker error logs stay out of the user's training log
    common = Config(env=args.env, workers=args.workers, gpu_ids=tuple(args.gpu_ids), log_dir=log_dir)
    variants = {"textbook": replace(common, textbook=True, channels_last=False)} if "textbook" in args.variants else {}
    for precision in PRECISIONS:
        if precision not in args.precisions:
            continue
        bf16 = "on" if precision == "bf16" else "off"
        fast = replace(common, envs_per_worker=args.envs_per_worker, bf16=bf16, replay_convs="off", cuda_graph="off")
        paths = {
            "fast": fast,
            "replay": replace(fast, replay_convs="on"),
            "graph": replace(fast, cuda_graph="on", replay_convs="on"),
        }
        suffix = " bf16" if precision == "bf16" else ""
        variants |= {name + suffix: cfg for name, cfg in paths.items() if name in args.variants}
    for cfg in variants.values():
        check_values(cfg)  # main.py's checks: GPU ids that exist, the graph variant only on GPU workers
    num_actions = describe_env(args.env, "config.json")
    print(f"{args.env}, {args.workers} workers, devices {args.gpu_ids}: {hardware()}", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    shared = shared_gpus(common.gpu_ids, common.workers, test=False)  # bench starts no test process
    sharing = gpu_sharing(args.mps, shared, lambda line, _: print(line))
    with sharing:
        for round_ in range(args.rounds):
            for name, cfg in variants.items():
                try:
                    result = measure(cfg, num_actions, args.warmup, args.duration)
                except RuntimeError as e:
                    print(f"error: {name}: {e} (worker logs in {log_dir})", file=sys.stderr)
                    return 1
                runs[name].append(result)
                print(f"round {round_ + 1}: {name:11s} {result['frames_per_s']:8.0f} frames/s", flush=True)
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
    both = "fast" in summary and "textbook" in summary
    ratio = summary["fast"]["frames_per_s"] / summary["textbook"]["frames_per_s"] if both else None
    first = next(iter(summary))
    print(f"\n| variant | frames/s | frames/s per worker | updates/s | peak RSS per worker (MB) | x {first} |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, s in summary.items():
        print(
            f"| {name} | {s['frames_per_s']:.0f} | {s['frames_per_s_per_worker']:.0f} | {s['updates_per_s']:.1f} "
            f"| {s['peak_rss_mb_per_worker']:.0f} | {s['frames_per_s'] / summary[first]['frames_per_s']:.2f} |"
        )
    if ratio is not None:
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
            "precisions": args.precisions,
            "mps": args.mps,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "rounds": runs,
            "summary": summary,
            "ratio": ratio,
            "phases_per_step": phases,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
