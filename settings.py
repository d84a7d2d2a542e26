"""A run's settings: one typed, read-only object, its value checks and the device placement it implies."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch

from mps import MODES as MPS_MODES
from utils import UsageError, safe_name


@dataclass(frozen=True)
class Config:
    """Every setting of a training run, parsed once by main.py and read-only after."""

    env: str = "PongNoFrameskip-v4"
    env_config: str = "config.json"
    lr: float = 2e-4
    gamma: float = 0.99
    tau: float = 0.92
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
    mps: str = "auto"  # CUDA MPS for workers sharing a GPU: auto, on, off (mps.py)
    envs_per_worker: int = 1
    textbook: bool = False
    channels_last: bool = True
    bf16: bool = False
    test_interval: float = 5.0
    test_stochastic: bool = False
    progress_interval: float = 10.0
    max_steps: int = 0
    max_time: float = 0.0
    target_score: float | None = None
    target_window: int = 10
    max_restarts: int = 3
    max_nan_updates: int = 100
    tensorboard_logger: bool = False
    sync_interval: float = 2.0
    sync_timeout: float = 30.0
    sync_op: str = "mean"
    host: int = 0  # this host's rank in a multi-host run (set from torchrun's environment, not a flag)
    hosts: int = 1

    def device_for(self, rank: int) -> torch.device:
        """Worker `rank`'s device: gpu_ids[rank % len] (A3G), or the CPU for -1."""
        gpu = self.gpu_ids[rank % len(self.gpu_ids)]
        return torch.device("cpu") if gpu < 0 else torch.device("cuda", gpu)

    def seed_for(self, slot: int) -> int:
        """The first seed of process `slot` (workers 0..workers-1, the test process: workers); its env i takes
        seed_for(slot) + i. Each process holds a block of envs_per_worker seeds, so that every env of every
        process has its own (another host's processes start after this host's block: seed_block)."""
        return self.seed + slot * self.envs_per_worker

    def steps_for(self, rank: int) -> int:
        """Rollout length of worker `rank`: its round-robin share of --distributed-step-size, else --num-steps."""
        sizes = self.distributed_step_size
        return sizes[rank % len(sizes)] if sizes else self.num_steps

    def checkpoint_path(self, directory: str | None = None, suffix: str = "") -> str:
        return os.path.join(directory or self.save_model_dir, f"{safe_name(self.env)}{suffix}.dat")

    def log_path(self, suffix: str) -> str:
        """Host 0's logs are <env><suffix>; another host's <env>_host<N><suffix> (a shared log dir stays apart)."""
        host = f"_host{self.host}" if self.host else ""
        return os.path.join(self.log_dir, f"{safe_name(self.env)}{host}{suffix}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def seed_block(workers: int, envs_per_worker: int) -> int:
    """How many seeds a host's processes use: one block of envs_per_worker per worker and for the test process."""
    return (workers + 1) * envs_per_worker


def check_values(cfg: Config) -> None:
    """Flag values that cannot work, each as one UsageError line."""
    positive = {
        "--workers": cfg.workers,
        "--num-steps": cfg.num_steps,
        "--hidden-size": cfg.hidden_size,
        "--skip-rate": cfg.skip_rate,
        "--max-episode-length": cfg.max_episode_length,
        "--envs-per-worker": cfg.envs_per_worker,
        "--target-window": cfg.target_window,
        "--max-nan-updates": cfg.max_nan_updates,
    }
    for name, value in positive.items():
        if value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    if any(s < 1 for s in cfg.distributed_step_size):
        raise UsageError(f"--distributed-step-size values must be at least 1, got {list(cfg.distributed_step_size)}")
    if not cfg.lr > 0 or not math.isfinite(cfg.lr):
        raise UsageError(f"--lr must be a positive number, got {cfg.lr}")
    if not 0 < cfg.gamma <= 1:
        raise UsageError(f"--gamma must lie in (0, 1], got {cfg.gamma}")
    if not 0 <= cfg.tau <= 1:
        raise UsageError(f"--tau must lie in [0, 1], got {cfg.tau}")
    for name, value in {
        "--entropy-coef": cfg.entropy_coef,
        "--value-coef": cfg.value_coef,
        "--max-grad-norm": cfg.max_grad_norm,
        "--test-interval": cfg.test_interval,
        "--max-steps": cfg.max_steps,
        "--max-time": cfg.max_time,
        "--max-restarts": cfg.max_restarts,
    }.items():
        if value < 0:
            raise UsageError(f"{name} must not be negative, got {value}")
    for name, value in {
        "--progress-interval": cfg.progress_interval,
        "--sync-interval": cfg.sync_interval,
        "--sync-timeout": cfg.sync_timeout,
    }.items():
        if not value > 0 or not math.isfinite(value):
            raise UsageError(f"{name} must be a positive number of seconds, got {value}")
    if cfg.mps not in MPS_MODES:
        raise UsageError(f"--mps must be one of {', '.join(MPS_MODES)}, got {cfg.mps!r}")
    check_gpus(cfg.gpu_ids)


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
