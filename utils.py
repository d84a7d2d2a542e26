"""Shared pieces: run settings, checkpoints, counters, logs, metrics and training-curve plots.

`python utils.py plot logs/<env>_metrics.csv [more.csv ...] [-o out.png]` redraws curves;
`python utils.py export trained_models/<env>.dat classic.dat` writes the weights for rl_a3c_pytorch.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pickle import UnpicklingError

import torch

CHECKPOINT_FORMAT = 1
# The frame pipeline of environment.make_env that checkpoints record: rl_a3c_pytorch's, step for step.
# Change it whenever that pipeline changes, so that a model is never silently played on other frames.
PREPROCESSING = "rl_a3c_pytorch"


class UsageError(Exception):
    """Bad input the user can fix; printed as one line, exit code 2, no traceback."""


class CheckpointError(UsageError):
    """A checkpoint that is missing, unreadable or does not fit the model asked for."""


@dataclass(frozen=True)
class Config:
    """Every setting of a training run, parsed once by main.py and read-only after."""

    env: str = "PongNoFrameskip-v4"
    env_config: str = "config.json"
    lr: float = 1e-4
    gamma: float = 0.99
    tau: float = 1.0
    seed: int = 1
    workers: int = 2
    num_steps: int = 20
    distributed_step_size: tuple[int, ...] = ()
    max_episode_length: int = 10000
    skip_rate: int = 4
    hidden_size: int = 512
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    max_grad_norm: float = 0.0
    optimizer: str = "Adam"
    amsgrad: bool = False
    shared_optimizer: bool = True
    load: bool = False
    save_max: bool = False
    load_model_dir: str = "trained_models/"
    save_model_dir: str = "trained_models/"
    log_dir: str = "logs/"
    gpu_ids: tuple[int, ...] = (-1,)
    envs_per_worker: int = 1
    textbook: bool = False
    channels_last: bool = True
    bf16: bool = False
    test_interval: float = 5.0
    progress_interval: float = 10.0
    max_steps: int = 0
    max_time: float = 0.0
    target_score: float | None = None
    target_window: int = 10
    max_restarts: int = 3
    max_nan_updates: int = 100
    tensorboard_logger: bool = False

    def device_for(self, rank: int) -> torch.device:
        """Worker `rank`'s device: gpu_ids[rank % len] (A3G), or the CPU for -1."""
        gpu = self.gpu_ids[rank % len(self.gpu_ids)]
        return torch.device("cpu") if gpu < 0 else torch.device("cuda", gpu)

    def steps_for(self, rank: int) -> int:
        """Rollout length of worker `rank`: its round-robin share of --distributed-step-size, else --num-steps."""
        sizes = self.distributed_step_size
        return sizes[rank % len(sizes)] if sizes else self.num_steps

    def checkpoint_path(self, directory: str | None = None, suffix: str = "") -> str:
        return os.path.join(directory or self.save_model_dir, f"{safe_name(self.env)}{suffix}.dat")

    def log_path(self, suffix: str) -> str:
        return os.path.join(self.log_dir, f"{safe_name(self.env)}{suffix}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def safe_name(env_id: str) -> str:
    """A file name for an env id: `ALE/Pong-v5` -> `ALE_Pong-v5`, `mod:Env-v0` -> `mod_Env-v0`."""
    return env_id.replace("/", "_").replace(":", "_").replace("\\", "_")


# ---------------------------------------------------------------- checkpoints


@dataclass
class Checkpoint:
    model: dict
    optimizer: dict | None = None
    frames: int = 0
    updates: int = 0
    best_score: float | None = None
    args: dict = field(default_factory=dict)
    preprocessing: str | None = None  # None: saved before checkpoints recorded it

    @property
    def hidden_size(self) -> int:
        return self.model["lstm.weight_hh"].shape[1]

    @property
    def num_actions(self) -> int:
        return self.model["actor_linear.weight"].shape[0]


def save_checkpoint(path: str, ckpt: Checkpoint) -> None:
    """Write a checkpoint atomically: a failed or interrupted save leaves the old file intact."""
    atomic_save({"format": CHECKPOINT_FORMAT, **asdict(ckpt)}, path)


def atomic_save(obj, path: str) -> None:
    """torch.save through a temp file, fsync and rename."""
    directory = os.path.dirname(os.path.abspath(path))
    buffer = io.BytesIO()
    torch.save(obj, buffer)  # serialise first: a failing disk then raises a plain OSError below
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".dat", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_run(path: str, cfg: Config, model, optimizer, counters: Counters, best_score, logger) -> bool:
    """Checkpoint a run (weights, optimizer statistics, counters, settings); a failed save is logged
    and leaves the previous file intact. Returns whether it was saved."""
    ckpt = Checkpoint(
        model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        optimizer=optimizer.state_dict() if optimizer is not None else None,
        frames=counters.frames,
        updates=counters.updates,
        best_score=best_score,
        args=cfg.to_dict(),
        preprocessing=PREPROCESSING,
    )
    try:
        save_checkpoint(path, ckpt)
    except OSError as e:
        logger.error("could not save %s (%s); the previous checkpoint is intact", path, e)
        return False
    return True


def load_checkpoint(path: str) -> Checkpoint:
    """Load the toolkit's checkpoint or a bare classic rl_a3c_pytorch state_dict (weights only)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}: train first, or point --load-model-dir/--model at one")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({reason}): use another file") from None
    if isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT:
        data.pop("format")
        ckpt = Checkpoint(**data)
    elif isinstance(data, dict) and "conv1.weight" in data:
        ckpt = Checkpoint(model=dict(data), preprocessing=PREPROCESSING)
    else:
        raise CheckpointError(f"{path} is not an A3C-LSTM checkpoint: use a file this toolkit or rl_a3c_pytorch saved")
    required = ("conv1.weight", "lstm.weight_hh", "actor_linear.weight", "critic_linear.weight")
    if any(k not in ckpt.model for k in required):
        raise CheckpointError(f"{path} lacks A3C-LSTM weights ({', '.join(required)}): use another file")
    return ckpt


def check_fits(ckpt: Checkpoint, path: str, num_actions: int, hidden_size: int, env_id: str) -> None:
    if ckpt.num_actions != num_actions:
        raise CheckpointError(
            f"{path} was trained for {ckpt.num_actions} actions but {env_id} has {num_actions}: "
            "load a checkpoint of this game"
        )
    if ckpt.hidden_size != hidden_size:
        raise CheckpointError(
            f"{path} has hidden size {ckpt.hidden_size} but --hidden-size is {hidden_size}: "
            f"pass --hidden-size {ckpt.hidden_size}"
        )


def preprocessing_warning(ckpt: Checkpoint, path: str) -> str | None:
    """One line saying why `ckpt` will play worse here than it did where it was trained, or None."""
    if ckpt.preprocessing == PREPROCESSING:
        return None
    trained = (
        "the toolkit's preprocessing before it matched rl_a3c_pytorch (max of 2 frames, other resize, no lives)"
        if ckpt.preprocessing is None
        else f"preprocessing {ckpt.preprocessing!r}"
    )
    return (
        f"{path} was trained with {trained} and plays here with {PREPROCESSING!r} frames: "
        "expect lower scores than it had; fine-tune it with main.py --load or retrain"
    )


def check_gpus(gpu_ids) -> None:
    count = torch.cuda.device_count()
    for gpu in gpu_ids:
        if gpu >= count or gpu < -1:
            raise UsageError(
                f"GPU id {gpu} does not exist (this machine has {count} CUDA device{'s' * (count != 1)}): "
                f"pass --gpu-ids -1 for the CPU" + (f" or ids 0..{count - 1}" if count else "")
            )
    if -1 in gpu_ids and len(gpu_ids) > 1:
        raise UsageError("--gpu-ids mixes -1 (CPU) with GPU ids: pass either -1 or GPU ids")


# ---------------------------------------------------------------- counters


class Counters:
    """Frames, updates and dropped (non-finite) updates, one shared slot per worker so writes never race."""

    def __init__(self, workers: int, frames: int = 0, updates: int = 0):
        self.table = torch.zeros(3, workers + 1, dtype=torch.int64).share_memory_()
        self.table[0, -1] = frames
        self.table[1, -1] = updates

    def add(self, rank: int, frames: int, updates: int = 0, dropped: int = 0) -> None:
        self.table[0, rank] += frames
        self.table[1, rank] += updates
        self.table[2, rank] += dropped

    @property
    def frames(self) -> int:
        return int(self.table[0].sum())

    @property
    def updates(self) -> int:
        return int(self.table[1].sum())

    @property
    def dropped(self) -> int:
        return int(self.table[2].sum())


class StopFlag:
    """A stop event in shared memory, lock-free: a process killed with -9 can never leave it locked
    (multiprocessing.Event holds a lock inside is_set(), and a worker killed there would hang the run)."""

    def __init__(self):
        self.flag = torch.zeros(1, dtype=torch.uint8).share_memory_()

    def set(self) -> None:
        self.flag[0] = 1

    def is_set(self) -> bool:
        return bool(self.flag[0])

    def wait(self, timeout: float, poll: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while not self.is_set() and time.monotonic() < deadline:
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
        return self.is_set()


class GameResults:
    """Test-game results passed from the test process to the launcher through a shared ring buffer.

    Lock-free for the same reason as StopFlag: the test process may be killed at any instant.
    """

    def __init__(self, capacity: int = 4096):
        self.rows = torch.zeros(capacity, 2, dtype=torch.float64).share_memory_()
        self.count = torch.zeros(1, dtype=torch.int64).share_memory_()

    def put(self, reward: float, length: int) -> None:
        n = int(self.count[0])
        self.rows[n % len(self.rows)] = torch.tensor([reward, length], dtype=torch.float64)
        self.count[0] = n + 1

    def since(self, seen: int) -> tuple[list[tuple[float, int]], int]:
        """Results after the first `seen` ones (at most the buffer's capacity), and the new total."""
        n = int(self.count[0])
        start = max(seen, n - len(self.rows))
        rows = [self.rows[i % len(self.rows)].tolist() for i in range(start, n)]
        return [(reward, int(length)) for reward, length in rows], n


# ---------------------------------------------------------------- logs and metrics


def tensorboard_writer(cfg: Config):
    if not cfg.tensorboard_logger:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(os.path.join(cfg.log_dir, "tensorboard", os.path.basename(cfg.log_path(""))))


def setup_logger(name: str, path: str | None = None) -> logging.Logger:
    """A logger that writes to the console and, given a path, appends to that file."""
    logger = logging.getLogger(name)
    if logger.handlers:
        return logger
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


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:02d}h {seconds % 3600 // 60:02d}m {seconds % 60:02d}s"


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
    directory = os.path.dirname(os.path.abspath(out_png))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=directory)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, out_png)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_classic(source: str, target: str) -> str:
    """Write a checkpoint's weights as a bare state_dict, the file rl_a3c_pytorch loads; returns a summary."""
    ckpt = load_checkpoint(source)
    if ckpt.preprocessing != PREPROCESSING:
        raise UsageError(
            f"{source} was not trained on rl_a3c_pytorch's frames (recorded: {ckpt.preprocessing}), so the classic "
            "tool would play it on other frames: fine-tune it with main.py --load first"
        )
    try:
        atomic_save(ckpt.model, target)
    except OSError as e:
        raise UsageError(f"cannot write {target} ({e.strerror}): choose a writable path") from None
    return f"wrote {target}: weights of {source} ({ckpt.frames:,} frames trained), the classic layout"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="utils.py", description="Toolkit utilities.")
    sub = parser.add_subparsers(dest="command", required=True)
    plot = sub.add_parser("plot", help="draw training curves from one or more metrics CSV files")
    plot.add_argument("metrics", nargs="+", help="logs/<env>_metrics.csv files; several are overlaid")
    plot.add_argument("-o", "--output", help="PNG to write (default: beside the first file, .png)")
    plot.add_argument("--window", type=int, default=10, help="moving-average window in games")
    plot.add_argument("--title", help="figure title (default: the run names)")
    export = sub.add_parser("export", help="write a checkpoint's weights as a bare state_dict for rl_a3c_pytorch")
    export.add_argument("checkpoint", help="a checkpoint this toolkit saved")
    export.add_argument("output", help="the .dat file to write")
    args = parser.parse_args(argv)
    if args.command == "export":
        try:
            print(export_classic(args.checkpoint, args.output))
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
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
