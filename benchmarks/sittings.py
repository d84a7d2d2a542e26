"""A long training run in sittings: record each sitting of a run kept in the repo and redraw its curve.

    python main.py --env BreakoutNoFrameskip-v4 --load --load-model-dir sittings/BreakoutNoFrameskip-v4 \
        --save-model-dir sittings/BreakoutNoFrameskip-v4 --log-dir sittings/BreakoutNoFrameskip-v4 --max-time 16000
    python -m benchmarks.sittings record sittings/BreakoutNoFrameskip-v4 --hardware "2 CPU cores (AMD EPYC)" \
        --command "python main.py ... --max-time 16000" --curve docs/breakout_curve.png

A run's folder holds its checkpoint (with the optimizer statistics, so that `--load` goes on where it
stopped), its log and metrics, and sittings.json, which lists every sitting: its date, commit, hardware
and command, the frames and training seconds it started and ended at, and the test games so far. `record`
appends the sitting that just ended, read from the checkpoint and the metrics; the curve (score against
frames and against time, every sitting joined) is redrawn from the run's metrics.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from checkpoint import load_checkpoint
from cli import Parser, run_command
from metrics import plot_metrics, read_metrics
from utils import UsageError, atomic_write, safe_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAST_GAMES = 10


def next_command(env: str, run_dir: str) -> str:
    return (
        f"python main.py --env {env} --load --load-model-dir {run_dir} --save-model-dir {run_dir} "
        f"--log-dir {run_dir} --max-time <training seconds so far + this sitting's>"
    )


def read_sittings(run_dir: str, env: str | None) -> dict:
    """The run's sittings.json, or a new one for `env` where there is none yet."""
    path = os.path.join(run_dir, "sittings.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    if env is None:
        raise UsageError(f"{path} does not exist: give --env for the run's first sitting")
    return {
        "env": env,
        "checkpoint": f"{safe_name(env)}.dat",
        "note": "A run in progress: the checkpoint keeps the optimizer statistics, and the logs continue with --load.",
        "next_sitting": next_command(env, run_dir),
        "sittings": [],
    }


def sitting_entry(record: dict, run_dir: str, hardware: str, command: str) -> dict:
    """The sitting that ended last: from where the previous recorded sitting ended to the checkpoint now."""
    ckpt = load_checkpoint(os.path.join(run_dir, record["checkpoint"]))
    metrics = os.path.join(run_dir, f"{safe_name(record['env'])}_metrics.csv")
    rows = read_metrics(metrics) if os.path.exists(metrics) else []
    previous = record["sittings"][-1] if record["sittings"] else None
    start_frames = previous["frames"][1] if previous else 0
    start_seconds = previous["training_seconds"][1] if previous else 0
    if ckpt.frames <= start_frames:
        raise UsageError(
            f"{run_dir}: the checkpoint's {ckpt.frames:,} frames are no more than the last recorded sitting's "
            f"{start_frames:,}: train a sitting first"
        )
    rewards = [row["reward"] for row in rows]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit.stdout.strip(),
        "hardware": hardware,
        "command": command,
        "frames": [start_frames, ckpt.frames],
        "training_seconds": [start_seconds, round(ckpt.elapsed)],
        "test_games": len(rows),
        f"last_{LAST_GAMES}_test_games_mean": statistics.fmean(rewards[-LAST_GAMES:]) if rewards else None,
        "best_test_game": max(rewards) if rewards else None,
    }


def write_sittings(run_dir: str, record: dict) -> str:
    path = os.path.join(run_dir, "sittings.json")
    with atomic_write(path) as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    return path


def record_sitting(run_dir: str, hardware: str, command: str, env: str | None = None, curve: str | None = None):
    """Append the sitting that just ended to `run_dir`'s sittings.json; redraw the curve to `curve`."""
    record = read_sittings(run_dir, env)
    entry = sitting_entry(record, run_dir, hardware, command)
    record["sittings"].append(entry)
    path = write_sittings(run_dir, record)
    if curve is not None:
        metrics = os.path.join(run_dir, f"{safe_name(record['env'])}_metrics.csv")
        count = len(record["sittings"])
        title = (
            f"{record['env']}: A3C-LSTM test games, {count} sitting{'s' * (count > 1)}, "
            f"{entry['frames'][1] / 1e6:.2f} M frames"
        )
        plot_metrics([metrics], curve, title)
    return path, entry


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="sittings", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    rec = sub.add_parser("record", help="append the sitting that just ended to the run's sittings.json")
    rec.add_argument("run_dir", help="the run's folder: its checkpoint, logs and sittings.json")
    rec.add_argument("--hardware", required=True, help="where the sitting trained: CPU or GPU, cores, workers")
    rec.add_argument("--command", required=True, help="the sitting's command")
    rec.add_argument("--env", help="the run's env, for its first sitting (later ones read it from sittings.json)")
    rec.add_argument("--curve", help="redraw the run's curve, every sitting joined, to this PNG")
    args = p.parse_args(argv)

    def body() -> int:
        path, entry = record_sitting(args.run_dir, args.hardware, args.command, args.env, args.curve)
        frames, seconds = entry["frames"], entry["training_seconds"]
        mean = entry[f"last_{LAST_GAMES}_test_games_mean"]
        print(
            f"recorded in {path}: frames {frames[0]:,} -> {frames[1]:,}, training {seconds[0] / 60:.0f} -> "
            f"{seconds[1] / 60:.0f} min, {entry['test_games']} test games, last {LAST_GAMES} mean "
            f"{'-' if mean is None else f'{mean:.1f}'}"
        )
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
