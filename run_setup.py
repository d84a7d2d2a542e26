"""A training run's setup: the checks before any process starts, the earlier run's files kept aside, and
what the processes share (`run_state.RunShared`: the shared model and optimizer, resumed from a checkpoint).
supervisor.py runs it."""

from __future__ import annotations

import os
import tempfile
import time

import torch

from checkpoint import Checkpoint, check_fits, load_checkpoint
from environment import describe_env
from model import A3Clstm
from run_state import Counters, GameResults, RunClock, RunShared, StopFlag
from settings import Config
from shared_optim import make_optimizer
from utils import UsageError


def check_writable(directory: str, flag: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise UsageError(
            f"{flag} {directory} is not writable ({e.strerror}): choose a directory you can write"
        ) from None


def prepare(cfg: Config) -> int:
    """Everything that can fail on bad input, done before any process starts; returns the env's action count."""
    check_writable(cfg.save_model_dir, "--save-model-dir")
    check_writable(cfg.log_dir, "--log-dir")
    num_actions = describe_env(cfg.env, cfg.env_config)
    if cfg.tensorboard_logger:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UsageError("--tensorboard-logger needs the tensorboard package: pip install tensorboard") from None
    return num_actions


def load_resume(cfg: Config, num_actions: int, required: bool = True) -> Checkpoint | None:
    """The checkpoint to resume (see resume_path), checked against the env; a missing one is an error if
    `required`, else None (a host of a multi-host run resumes from whichever host has one)."""
    path = resume_path(cfg)
    if not required and not os.path.exists(path):
        return None
    ckpt = load_checkpoint(path)
    check_fits(ckpt, path, num_actions, cfg.hidden_size, cfg.env)
    return ckpt


def check_limits(cfg: Config, ckpt: Checkpoint | None) -> None:
    """--max-steps and --max-time count the whole run, across --load (as the checkpoint's frames and training
    time do): resuming a run that has already reached one is bad input, said before any process starts."""
    if ckpt is None:
        return
    if cfg.max_steps and ckpt.frames >= cfg.max_steps:
        raise UsageError(
            f"the run has trained {ckpt.frames:,} frames, --max-steps {cfg.max_steps:,} is reached: "
            "raise it to train on (it counts frames across --load)"
        )
    if cfg.max_time and ckpt.elapsed >= cfg.max_time:
        raise UsageError(
            f"the run has trained {ckpt.elapsed:,.0f} s, --max-time {cfg.max_time:g} is reached: "
            "raise it to train on (it counts training time across --load)"
        )


def under_torchrun() -> bool:
    """Whether torchrun (or another env:// launcher of torch.distributed) started this process: a multi-host run."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def resume_path(cfg: Config) -> str:
    """The newer of <env>.dat and <env>_last.dat (--save-max writes the final state to the latter)."""
    paths = [cfg.checkpoint_path(cfg.load_model_dir, suffix) for suffix in ("", "_last")]
    existing = [p for p in paths if os.path.exists(p)]
    return max(existing, key=os.path.getmtime) if existing else paths[0]


def keep_previous_run(cfg: Config) -> list[str]:
    """A fresh run never overwrites an earlier run: move its checkpoints (host 0 keeps them) and this host's
    log, metrics, progress and curve aside, stamped with the time of the earlier run. Returns the paths kept."""
    checkpoints = [cfg.checkpoint_path(suffix=suffix) for suffix in ("", "_last")] if cfg.host == 0 else []
    logs = [cfg.log_path(suffix) for suffix in ("_log", "_metrics.csv", "_progress.jsonl", ".png")]
    earlier = [p for p in checkpoints + logs if os.path.exists(p)]
    if not earlier:
        return []
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(max(map(os.path.getmtime, earlier))))
    kept = [f"{p.removesuffix('.dat')}.{stamp}.dat" if p in checkpoints else f"{p}.{stamp}" for p in earlier]
    for path, aside in zip(earlier, kept):
        os.replace(path, aside)
    return kept


def build_run(cfg: Config, num_actions: int, ckpt: Checkpoint | None, logger) -> RunShared:
    """The shared model (initialised from --seed, or resumed from `ckpt`), the shared optimizer, counters and
    flags. The caller's torch random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = A3Clstm(1, num_actions, cfg.hidden_size)
    optimizer = None
    if cfg.shared_optimizer:
        optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.amsgrad)
    if ckpt is not None:
        restore(cfg, model, optimizer, ckpt, logger)
    model.share_memory()
    counters = Counters(cfg.workers, ckpt.frames if ckpt else 0, ckpt.updates if ckpt else 0)
    clock = RunClock(ckpt.elapsed if ckpt else 0.0, time.time())
    results = GameResults(best=ckpt.best_score if ckpt else None)
    return RunShared(cfg, model, optimizer, counters, StopFlag(), results, os.getpid(), clock)


def restore(cfg: Config, model: A3Clstm, optimizer, ckpt: Checkpoint, logger) -> None:
    """Load a checkpoint's weights, and its optimizer statistics where the optimizer is the same."""
    model.load_state_dict(ckpt.model)
    saved = ckpt.args
    same_optimizer = saved.get("optimizer") == cfg.optimizer and saved.get("amsgrad") == cfg.amsgrad
    if optimizer is not None and ckpt.optimizer and same_optimizer:
        optimizer.load_state_dict(ckpt.optimizer)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr
        optimizer.share_memory()
        restored = "weights, optimizer statistics"
    else:
        restored = "weights only"
    logger.info("resumed from %s frames, %s updates (%s)", f"{ckpt.frames:,}", f"{ckpt.updates:,}", restored)
