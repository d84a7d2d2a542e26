"""Multi-host scaling benchmark: training frames/s of one host against several torchrun hosts on this machine,
over the loopback address and, with --netns, each host in a network namespace of its own (a veth pair).

    python -m benchmarks.bench_hosts                                  # 1 host of 2 workers, then 2 hosts of 1 worker
    python -m benchmarks.bench_hosts --workers 16 --netns --duration 120

Every run is a real training run (main.py; under torchrun for several hosts) with the same total of workers,
split evenly between the hosts; the rate is the run's global frame count over the last --duration seconds,
read from host 0's progress lines. The hosts share this machine's cores, so the per-core figure is the
total over the CPUs this process may use (settings.usable_cpus).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

from benchmarks.bench import hardware, write_json
from cli import Parser, add_run_flags, run_command
from local_hosts import ROOT, free_port, network_namespaces, torchrun_command, torchrun_env
from metrics import read_metrics, read_progress
from settings import usable_cpus
from utils import UsageError, safe_name


def steady_rate(progress: list[dict], seconds: float) -> float:
    """Frames/s over the last `seconds` of a run's progress reports (global frames in a multi-host run)."""
    points = [(p["time"], p["frames"]) for p in progress if "event" not in p]
    if len(points) < 2:
        raise RuntimeError("the run reported its progress fewer than two times")
    end_time, end_frames = points[-1]
    start_time, start_frames = next(p for p in points if p[0] >= end_time - seconds)
    if end_time <= start_time:
        raise RuntimeError("the run's progress lines span no time")
    return (end_frames - start_frames) / (end_time - start_time)


def run_hosts(args, hosts: int, namespaces, root: str) -> dict:
    """One run of `hosts` hosts sharing args.workers: its steady frames/s, and from launch to its end the
    seconds, the frames and why it stopped (a --target-score in --train-args makes it a time to a score)."""
    run_dir = tempfile.mkdtemp(prefix=f"{hosts}hosts-", dir=root)
    per_host = max(1, args.workers // hosts)
    flags = [
        *("--env", args.env, "--workers", per_host, "--max-time", args.warmup + args.duration),
        *("--progress-interval", args.progress_interval, "--log-dir", run_dir, "--save-model-dir", run_dir),
        *shlex.split(args.train_args),
    ]
    if hosts == 1:
        commands, envs = [[sys.executable, os.path.join(ROOT, "main.py"), *flags]], [None]
    else:
        endpoint = f"{namespaces[0]['addr'] if namespaces else '127.0.0.1'}:{free_port()}"
        spaces = namespaces or [None] * hosts
        commands = [torchrun_command(i, hosts, endpoint, flags, netns=spaces[i]) for i in range(hosts)]
        envs = [torchrun_env(space) for space in spaces]
    launch = time.time()
    processes = []
    for i, (command, env) in enumerate(zip(commands, envs)):
        with open(os.path.join(run_dir, f"host{i}.out"), "w") as out:
            processes.append(
                subprocess.Popen(list(map(str, command)), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            )
    deadline = launch + args.warmup + args.duration + 180
    try:
        for process in processes:
            process.wait(max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        raise RuntimeError(f"the {hosts}-host run did not stop in time (see {run_dir})") from None
    seconds = time.time() - launch
    progress = read_progress(os.path.join(run_dir, f"{safe_name(args.env)}_progress.jsonl"))
    metrics = os.path.join(run_dir, f"{safe_name(args.env)}_metrics.csv")
    rewards = [row["reward"] for row in read_metrics(metrics)] if os.path.exists(metrics) else []
    stopped = progress[-1] if progress and progress[-1].get("event") == "stopped" else {}
    return {
        "hosts": hosts,
        "frames_per_s": steady_rate(progress, args.duration),
        "seconds": seconds,
        "frames": stopped.get("frames"),
        "stop_reason": stopped.get("reason"),
        "test_rewards": rewards,
        "run_dir": run_dir,
    }


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="bench_hosts.py", description=__doc__.split("\n\n")[0])
    add_run_flags(p, gpus=False, workers_help="workers in all, split between hosts")
    p.add_argument("--hosts", type=int, default=2, help="hosts of the multi-host runs (2 with --netns)")
    p.add_argument("--netns", action="store_true", help="also run the hosts in network namespaces of their own")
    p.add_argument("--warmup", type=float, default=30.0, help="seconds from launch not counted")
    p.add_argument("--duration", type=float, default=60.0, help="seconds counted per run")
    p.add_argument("--progress-interval", type=float, default=5.0)
    p.add_argument("--train-args", default="", help='further main.py flags, e.g. "--sync-interval 5"')
    p.add_argument("--json", default="logs/bench_hosts.json", help="where to write the results")
    args = p.parse_args(argv)
    return run_command(lambda: benchmark(args))


def benchmark(args) -> int:
    """Check the flags (a UsageError before anything starts), then run 1 host and the hosts; report."""
    if args.hosts < 2 or args.workers < args.hosts or args.duration <= 0 or args.warmup < 0:
        raise UsageError("--hosts must be at least 2, --workers at least --hosts, --duration positive")
    if args.netns and args.hosts != 2:
        raise UsageError("--netns makes two namespaces: pass --hosts 2")
    root = tempfile.mkdtemp(prefix="bench-hosts-")
    cores = usable_cpus()
    print(f"{args.env}, {args.workers} workers in all: {hardware()}", flush=True)
    variants = [("1 host", 1, False), (f"{args.hosts} hosts, loopback", args.hosts, False)]
    if args.netns:
        variants.append((f"{args.hosts} hosts, network namespaces", args.hosts, True))
    results = {}
    with network_namespaces(f"bh{os.getpid() % 100000}") if args.netns else nullcontext() as namespaces:
        for name, hosts, own_netns in variants:
            try:
                result = run_hosts(args, hosts, namespaces if own_netns else None, root)
            except RuntimeError as e:
                print(f"error: {name}: {e}", file=sys.stderr)
                return 1
            result["frames_per_s_per_core"] = result["frames_per_s"] / cores
            results[name] = result
            print(
                f"{name}: {result['frames_per_s']:,.0f} frames/s, stopped after {result['seconds']:.0f} s: "
                f"{result['stop_reason']}",
                flush=True,
            )
    base = results["1 host"]["frames_per_s"]
    if base <= 0:
        print("error: 1 host: no frames counted after --warmup: lengthen --warmup and --duration", file=sys.stderr)
        return 1
    print("\n| run | frames/s | per core | vs 1 host | launch to stop | frames | test games: best, last 5 | stop |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for name, r in results.items():
        games = "none"
        if r["test_rewards"]:
            last = ", ".join(f"{x:g}" for x in r["test_rewards"][-5:])
            games = f"{len(r['test_rewards'])}: best {max(r['test_rewards']):g}, last {last}"
        print(
            f"| {name} | {r['frames_per_s']:,.0f} | {r['frames_per_s_per_core']:,.0f} "
            f"| {r['frames_per_s'] / base:.2f}x | {r['seconds']:.0f} s | {r['frames'] or 0:,} | {games} "
            f"| {r['stop_reason']} |"
        )
    write_json(args.json, {"hardware": hardware(), "env": args.env, "workers": args.workers, "runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
