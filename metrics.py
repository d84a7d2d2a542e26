"""Logs, metrics and curves: the run's log, TensorBoard scalars, the per-game metrics CSV and its plots.

`python metrics.py plot logs/<env>_metrics.csv [more.csv ...] [-o out.png]` redraws curves.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import statistics
import sys
from typing import TYPE_CHECKING

from utils import atomic_write

if TYPE_CHECKING:
    from settings import Config


def tensorboard_writer(cfg: Config):
    if not cfg.tensorboard_logger:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(os.path.join(cfg.log_dir, "tensorboard", os.path.basename(cfg.log_path(""))))


def setup_logger(name: str, path: str | None = None) -> logging.Logger:
    """A logger that writes to the console and, given a path, appends to that file (a later call with
    another path, as a second run from Python makes, moves the logger to that file)."""
    logger = logging.getLogger(name)
    files = [h.baseFilename for h in logger.handlers if isinstance(h, logging.FileHandler)]
    if logger.handlers and files == ([os.path.abspath(path)] if path else []):
        return logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if path:
        handlers.append(logging.FileHandler(path))
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


METRIC_FIELDS = ("wall_time", "elapsed", "frames", "updates", "reward", "length", "fps")


def append_metrics(path: str, row: dict) -> None:
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row[k] for k in METRIC_FIELDS})


def read_metrics(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def read_progress(path: str) -> list[dict]:
    """A run's progress reports (supervisor.RunMonitor), oldest first; the last has "event": "stopped" once
    the run has ended. A missing file is an empty list, a line cut short by a crash is skipped."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def reaches(rewards: list[float], score: float, window: int) -> bool:
    """The rule of --target-score: there are `window` test games, and the last `window` average >= score."""
    return len(rewards) >= window and statistics.fmean(rewards[-window:]) >= score


def first_reaching(rows: list[dict], score: float, window: int) -> dict | None:
    """The first test game after which the run `reaches` the score (window 1: that game alone)."""
    rewards = [row["reward"] for row in rows]
    for i in range(len(rows)):
        if reaches(rewards[: i + 1], score, window):
            return {"seconds": rows[i]["since_launch"], "frames": int(rows[i]["frames"]), "games": i + 1}
    return None


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_metrics(paths: list[str], out_png: str, title: str, window: int = 10) -> None:
    """Draw test reward against frames and against wall time, raw and smoothed, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_frames, ax_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, path in enumerate(paths):
        rows = read_metrics(path)
        if not rows:
            continue
        color = f"C{i}"
        label = os.path.basename(path).removesuffix("_metrics.csv")
        rewards = [r["reward"] for r in rows]
        smooth = moving_average(rewards, window)
        frames = [r["frames"] / 1e6 for r in rows]
        minutes = [r["elapsed"] / 60 for r in rows]
        for ax, x in ((ax_frames, frames), (ax_time, minutes)):
            ax.plot(x, rewards, ".", color=color, alpha=0.3)
            ax.plot(x, smooth, "-", color=color, label=f"{label} (mean of {window})")
    ax_frames.set_xlabel("frames (millions)")
    ax_time.set_xlabel("wall time (minutes)")
    for ax in (ax_frames, ax_time):
        ax.set_ylabel("test game reward")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_write(out_png, "wb") as f:
            fig.savefig(f, dpi=100, format="png")
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from cli import Parser

    parser = Parser(prog="metrics.py", description="Training curves.")
    sub = parser.add_subparsers(dest="command", required=True)
    plot = sub.add_parser("plot", help="draw training curves from one or more metrics CSV files")
    plot.add_argument("metrics", nargs="+", help="logs/<env>_metrics.csv files; several are overlaid")
    plot.add_argument("-o", "--output", help="PNG to write (default: beside the first file, .png)")
    plot.add_argument("--window", type=int, default=10, help="moving-average window in games")
    plot.add_argument("--title", help="figure title (default: the run names)")
    args = parser.parse_args(argv)
    missing = [p for p in args.metrics if not os.path.isfile(p)]
    if missing:
        print(f"error: no metrics file at {missing[0]}: train first or pass logs/<env>_metrics.csv", file=sys.stderr)
        return 2
    out = args.output or args.metrics[0].removesuffix(".csv").removesuffix("_metrics") + ".png"
    names = [os.path.basename(p).removesuffix(".csv").removesuffix("_metrics") for p in args.metrics]
    plot_metrics(args.metrics, out, args.title or " vs ".join(names), args.window)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
