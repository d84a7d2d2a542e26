"""Checkpoint files: the one place that saves and loads them (atomically), checks they fit, and exports them.

`python checkpoint.py export trained_models/<env>.dat classic.dat` writes the weights for rl_a3c_pytorch.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

import torch

from utils import UsageError, atomic_write, first_line

if TYPE_CHECKING:
    from run_state import RunShared
    from settings import Config

CHECKPOINT_FORMAT = 1
# The frame pipeline of environment.make_env that checkpoints record: rl_a3c_pytorch's, step for step.
# Change it whenever that pipeline changes, so that a model is never silently played on other frames.
PREPROCESSING = "rl_a3c_pytorch"


class CheckpointError(UsageError):
    """A checkpoint that is missing, unreadable or does not fit the model asked for."""


@dataclass
class Checkpoint:
    model: dict
    optimizer: dict | None = None
    frames: int = 0
    updates: int = 0
    best_score: float | None = None
    elapsed: float = 0.0  # seconds of training, across resumes
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
    """torch.save, all or nothing (utils.atomic_write)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)  # serialise first: a failing disk then raises a plain OSError below
    with atomic_write(path, "wb") as f:
        f.write(buffer.getbuffer())


def final_path(cfg: Config) -> str:
    """Where a run's final state goes: <env>.dat, or <env>_last.dat with --save-max (<env>.dat keeps the best)."""
    return cfg.checkpoint_path(suffix="_last" if cfg.save_max else "")


def saves_test_game(cfg: Config, reward: float, best: float | None) -> bool:
    """Whether the test process saves after a game: after each one, or with --save-max after one that ties or
    beats the best score so far (as the classic tool does)."""
    return not cfg.save_max or best is None or reward >= best


def save_run(path: str, run: RunShared, model, best_score, logger) -> bool:
    """Checkpoint a run (`model`'s weights, the shared optimizer statistics, counters, training time,
    settings); a failed save is logged and leaves the previous file intact. Returns whether it was saved."""
    ckpt = Checkpoint(
        model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        optimizer=run.optimizer.state_dict() if run.optimizer is not None else None,
        frames=run.counters.frames,
        updates=run.counters.updates,
        best_score=best_score,
        elapsed=run.clock.elapsed(),
        args=run.cfg.to_dict(),
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
    except Exception as e:  # garbage bytes fail in the unpickler in many ways (IndexError, KeyError, ...)
        reason = first_line(e)
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({reason}): use another file") from None
    if isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT:
        data.pop("format")
        ckpt = checkpoint_from(data, path)
    elif isinstance(data, dict) and "conv1.weight" in data:
        ckpt = Checkpoint(model=dict(data), preprocessing=PREPROCESSING)
    else:
        raise CheckpointError(f"{path} is not an A3C-LSTM checkpoint: use a file this toolkit or rl_a3c_pytorch saved")
    required = ("conv1.weight", "lstm.weight_hh", "actor_linear.weight", "critic_linear.weight")
    if any(k not in ckpt.model for k in required):
        raise CheckpointError(f"{path} lacks A3C-LSTM weights ({', '.join(required)}): use another file")
    return ckpt


def checkpoint_from(data: dict, path: str) -> Checkpoint:
    """The Checkpoint a saved dict holds; a missing or unknown entry is a CheckpointError naming it."""
    names = {f.name for f in fields(Checkpoint)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(f"{path} has entries this toolkit does not know ({', '.join(unknown)}): use another file")
    if not isinstance(data.get("model"), dict):
        raise CheckpointError(f"{path} has no model weights: use another file")
    return Checkpoint(**data)


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
    from cli import Parser, run_command

    parser = Parser(prog="checkpoint.py", description="Checkpoint files.")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write a checkpoint's weights as a bare state_dict for rl_a3c_pytorch")
    export.add_argument("checkpoint", help="a checkpoint this toolkit saved")
    export.add_argument("output", help="the .dat file to write")
    args = parser.parse_args(argv)
    return run_command(lambda: print(export_classic(args.checkpoint, args.output)) or 0)


if __name__ == "__main__":
    sys.exit(main())
