"""Time-to-score benchmark: real training runs from launch until the test games reach a score.

    python -m benchmarks.bench_score --score 18 --window 5 --seeds 1 2 --max-time 2400
    python -m benchmarks.bench_score --score 18 --milestones -10 0 10 --train-args "" "--tau 1.0 --lr 1e-4"
    python -m benchmarks.bench_score --score 18 --train-args=--test-stochastic

A lone flag as --train-args needs the "=" form, or argparse would read it as one of this script's options.

Each run is a real `python main.py` (stopped by --target-score or --max-time) with its own logs and
checkpoints under --runs-dir. Reported per run, from launch: the wall-clock seconds and frames until
the first test game reaches the score, and until the mean of --window consecutive test games reaches
each milestone and the score; a per-minute timeline; per variant a median and a spread over the
seeds. Milestones compare runs that stop before the score: frames to a milestone measure learning
per frame whatever the machine's speed.

Several --train-args strings are variants compared side by side: the runs alternate variants seed by
seed (seed 1 of each variant, then seed 2 of each), so a machine that drifts in speed drifts for all.

The results are written to --json after every run. A comparison too long for one sitting goes on with
--resume: the finished runs in --json are kept and only the missing (seed, variant) runs are trained,
provided the earlier call measured the same settings on the same hardware (CPU model and bf16 units).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.bench import hardware, write_json
from cli import Parser, add_run_flags, run_command
from environment import describe_env
from main import parse_config
from metrics import first_reaching, read_metrics
from settings import check_values
from utils import UsageError, safe_name


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


def lone_train_flag(argv: list[str]) -> str | None:
    """The main.py flag right after --train-args (`--train-args --bf16`), which argparse would take for an
    option of this script, if there is one."""
    for before, after in zip(argv, argv[1:]):
        if before == "--train-args" and after.startswith("-") and " " not in after:
            return after
    return None


def variant_name(train_args: str) -> str:
    return train_args.strip() or "defaults"


def main_flags(args, train_args: str, seed: int, run_dir: str) -> list[str]:
    """The main.py command line of one run."""
    flags = [
        *("--env", args.env, "--workers", args.workers, "--seed", seed, "--gpu-ids", *args.gpu_ids),
        *("--target-score", args.score, "--target-window", args.window, "--max-time", args.max_time),
        *("--log-dir", run_dir, "--save-model-dir", run_dir, "--load-model-dir", run_dir),
    ]
    return [*map(str, flags), *shlex.split(train_args)]


def train_to_score(args, train_args: str, seed: int, run_dir: str) -> dict:
    """One real training run from launch until the score is reached or --max-time; its results as data."""
    metrics = os.path.join(run_dir, f"{safe_name(args.env)}_metrics.csv")
    os.makedirs(run_dir, exist_ok=True)
    label = f"{variant_name(train_args)}, seed {seed}"
    launch = time.time()
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(launch))
    with open(os.path.join(run_dir, "main.out"), "w") as out:
        main_py = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "main.py")
        command = [sys.executable, main_py, *main_flags(args, train_args, seed, run_dir)]
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
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
                        f"  {label}: {minute} min, {frames} frames, {len(rows)} games, mean({args.window}) {mean}",
                        flush=True,
                    )
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: main.py saves and stops (a second signal changes nothing)
            interrupted = True
            process.terminate()
            process.wait()
    seconds = time.time() - launch
    rows = read_metrics(metrics) if os.path.exists(metrics) else []
    for row in rows:
        row["since_launch"] = row["wall_time"] - launch
    return {
        "variant": variant_name(train_args),
        "train_args": train_args,
        "seed": seed,
        "started": started,
        "exit_code": process.returncode,
        "interrupted": interrupted,
        "seconds": seconds,
        "frames": int(rows[-1]["frames"]) if rows else 0,
        "games": len(rows),
        "first_game": first_reaching(rows, args.score, 1),
        "mean": first_reaching(rows, args.score, args.window),
        "milestones": {str(m): first_reaching(rows, m, args.window) for m in args.milestones},
        "timeline": timeline(rows, args.window, seconds),
        "run_dir": run_dir,
    }


def minutes(seconds: float | None) -> str:
    return "not reached" if seconds is None else f"{seconds / 60:.1f} min"


def million_frames(frames: float | None) -> str:
    return "not reached" if frames is None else f"{frames / 1e6:.2f} M frames"


def reached_cell(hit: dict | None) -> str:
    return "not reached" if hit is None else f"{minutes(hit['seconds'])}, {million_frames(hit['frames'])}"


def spread(hits: list[dict | None], field: str) -> dict | None:
    """Median, min and max of a field over runs; a run that used its whole time without reaching the score (None)
    counts as slower than every run that did, so a median or max that falls on one is None (not reached). None if
    no run reached it."""
    values = [hit[field] for hit in hits if hit is not None]
    if not values:
        return None
    ranked = sorted(values) + [math.inf] * (len(hits) - len(values))
    median = statistics.median(ranked)
    return {
        "median": None if math.isinf(median) else median,
        "min": ranked[0],
        "max": None if math.isinf(ranked[-1]) else ranked[-1],
        "runs": len(values),
    }


def summarise(runs: list[dict], args) -> dict:
    """Per variant: the spread of seconds and frames to the first game, each milestone and the mean, over the
    runs that reached it or ran their whole time (one stopped early without reaching it says nothing of it)."""
    summary = {}
    for name in dict.fromkeys(run["variant"] for run in runs):
        mine = [run for run in runs if run["variant"] == name]
        targets = {"first_game": [run["first_game"] for run in mine], "mean": [run["mean"] for run in mine]}
        targets |= {f"milestone {m}": [run["milestones"][str(m)] for run in mine] for m in args.milestones}
        summary[name] = {}
        for key, all_hits in targets.items():
            hits = [hit for hit, run in zip(all_hits, mine) if hit is not None or not run["interrupted"]]
            summary[name][key] = {"seconds": spread(hits, "seconds"), "frames": spread(hits, "frames"), "of": len(hits)}
    return summary


def print_report(runs: list[dict], summary: dict, args) -> None:
    w = args.window
    goals = [*(f"mean({w}) >= {m:g}" for m in args.milestones), f"mean({w}) >= {args.score:g}"]
    print(f"\n| variant | seed | first game >= {args.score:g} | {' | '.join(goals)} | frames | games |")
    print(f"| --- | --- | --- |{' --- |' * len(goals)} ---: | ---: |")
    for run in runs:
        cells = [reached_cell(run["first_game"])]
        cells += [reached_cell(run["milestones"][str(m)]) for m in args.milestones] + [reached_cell(run["mean"])]
        print(
            f"| {run['variant']} | {run['seed']} | {' | '.join(cells)} | {run['frames'] / 1e6:.2f} M | {run['games']} |"
        )
    print()
    labels = {"first_game": f"first game >= {args.score:g}", "mean": f"mean({w}) >= {args.score:g}"}
    labels |= {f"milestone {m}": f"mean({w}) >= {m:g}" for m in args.milestones}
    for name, targets in summary.items():
        for key in ("first_game", *(f"milestone {m}" for m in args.milestones), "mean"):
            s, f, of = targets[key]["seconds"], targets[key]["frames"], targets[key]["of"]
            if s is None:
                print(f"{name}: {labels[key]}: reached by no run")
                continue
            print(
                f"{name}: {labels[key]}: median {minutes(s['median'])} (spread {minutes(s['min'])} to "
                f"{minutes(s['max'])}), median {million_frames(f['median'])}, {s['runs']} of {of} runs"
            )
    for run in runs:
        print(f"\n{run['variant']}, seed {run['seed']}, per minute:\n| minute | frames | games | last | mean({w}) |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for entry in run["timeline"]:
            if entry["games"]:
                print(
                    f"| {entry['minute']} | {entry['frames'] / 1e6:.2f} M | {entry['games']} | {entry['last']:g} "
                    f"| {entry['mean']:.1f} |"
                )


def interrupt_on_sigterm() -> None:
    """SIGTERM (kill, a batch system's time limit) stops the benchmark as Ctrl-C does, so that the training run
    it started stops with it and the runs so far are reported, instead of the run going on alone."""

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def comparison(args) -> dict:
    """What a call measures and where: two calls' runs join only where these are equal."""
    record = {
        "hardware": hardware(),
        "env": args.env,
        "score": args.score,
        "window": args.window,
        "milestones": args.milestones,
        "workers": args.workers,
        "gpu_ids": args.gpu_ids,
        "variants": args.train_args,
        "max_time_s": args.max_time,
    }
    return json.loads(json.dumps(record))  # as --json holds it


def finished_runs(args) -> list[dict]:
    """--resume: the earlier call's runs that finished, read from --json; a UsageError where that call
    measured other settings or ran on other hardware."""
    if not args.resume or not os.path.exists(args.json):
        return []
    try:
        with open(args.json) as f:
            earlier = json.load(f)
        runs = earlier["runs"]
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"--resume: cannot read the earlier results in {args.json} ({e})") from None
    for key, value in comparison(args).items():
        if earlier.get(key) != value:
            raise UsageError(
                f"--resume: {args.json} holds runs with {key} {earlier.get(key)!r}, this call has {value!r}; "
                "resume with the same settings and hardware, or give another --json"
            )
    return [run for run in runs if not run["interrupted"] and run["exit_code"] == 0]


def run_benchmark(args) -> int:
    interrupt_on_sigterm()
    root = tempfile.mkdtemp(prefix="to-score-", dir=args.runs_dir)
    print(
        f"{args.env}: time to a test mean of {args.window} games >= {args.score:g}, seeds {args.seeds}, "
        f"variants {[variant_name(v) for v in args.train_args]}, {args.workers} workers, devices {args.gpu_ids}, "
        f"at most {args.max_time:g} s each: {hardware()}",
        flush=True,
    )
    runs = finished_runs(args)
    if runs:
        print(f"resumed {len(runs)} finished runs from {args.json}: {', '.join(run['started'] for run in runs)}")
    done = {(run["variant"], run["seed"]) for run in runs}
    for seed in args.seeds:
        for index, train_args in enumerate(args.train_args):
            if (variant_name(train_args), seed) in done:
                continue
            run = train_to_score(args, train_args, seed, os.path.join(root, f"variant{index}_seed{seed}"))
            runs.append(run)
            write_json(args.json, {**comparison(args), "runs": runs, "summary": summarise(runs, args)})
            if run["exit_code"] != 0:
                print(
                    f"error: {run['variant']}, seed {seed}: main.py exited with {run['exit_code']} "
                    f"(see {run['run_dir']}/main.out)"
                )
            if run["interrupted"]:
                break
        if runs and runs[-1]["interrupted"]:
            print("interrupted: reporting the runs so far")
            break
    summary = summarise(runs, args)
    print_report(runs, summary, args)
    write_json(args.json, {**comparison(args), "runs": runs, "summary": summary})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(p)
    p.add_argument("--score", type=float, required=True, help="train until the test mean reaches this")
    p.add_argument("--window", type=int, default=5, help="consecutive test games averaged")
    p.add_argument("--milestones", type=float, nargs="+", default=[], help="lower scores also timed, e.g. -10 0 10")
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="one training run per seed and variant")
    p.add_argument("--max-time", type=float, default=3600.0, help="seconds each run may take at most")
    p.add_argument(
        "--train-args",
        nargs="+",
        default=[""],
        help='further main.py flags; several strings are variants compared side by side: "" "--tau 1.0"; '
        'a lone flag takes "=": --train-args=--test-stochastic',
    )
    p.add_argument("--runs-dir", default="logs", help="where the runs keep their logs and checkpoints")
    p.add_argument("--json", default="logs/bench_score.json", help="where to write the results, after every run")
    p.add_argument("--resume", action="store_true", help="keep the finished runs in --json and train only the rest")
    argv = sys.argv[1:] if argv is None else argv
    return run_command(lambda: run_benchmark(checked_args(p, argv)))


def checked_args(p, argv: list[str]):
    """The flags, each variant checked as main.py would check it: a UsageError before any run starts."""
    if lone := lone_train_flag(argv):
        raise UsageError(f'a lone main.py flag after --train-args needs "=": --train-args={lone}')
    args = p.parse_args(argv)
    if args.window < 1 or args.max_time <= 0 or args.workers < 1:
        raise UsageError("--window, --workers and --max-time must be positive")
    if any(m >= args.score for m in args.milestones):
        raise UsageError(f"--milestones must lie below --score {args.score:g}, got {args.milestones}")
    args.milestones = sorted(args.milestones)
    for train_args in args.train_args:  # a bad flag stops here, as main.py would report it, before any run
        try:
            flags = main_flags(args, train_args, args.seeds[0], args.runs_dir)
        except ValueError as e:
            raise UsageError(f"--train-args cannot be split into flags ({e})") from None
        check_values(parse_config(flags))
    describe_env(args.env, "config.json")
    finished_runs(args)
    os.makedirs(args.runs_dir, exist_ok=True)
    return args


if __name__ == "__main__":
    sys.exit(main())
