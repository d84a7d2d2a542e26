"""What every process of a run does first: its name, one thread, its seed and its device; and its own model."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import torch

from model import A3Clstm

if TYPE_CHECKING:
    from settings import Config


def init_process(title: str, seed: int, device: torch.device) -> None:
    """Per-process setup: a name in ps/top, one intra-op thread, Ctrl-C and hang-up left to the launcher, a seed,
    and the process's GPU as its current device (use_device)."""
    from setproctitle import setproctitle

    setproctitle(title)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    torch.manual_seed(seed)
    use_device(device)


def use_device(device: torch.device) -> None:
    """Make a GPU process's device its current one before anything touches CUDA. Whatever uses the current
    device (pinned memory, a synchronize or graph capture without a device, cuBLAS handles) would otherwise
    create a context on GPU 0: with --gpu-ids 0 1 2 3, GPU 0 would carry one (and an MPS client) per process."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def build_model(num_actions: int, cfg: Config, device: torch.device) -> A3Clstm:
    """A process-local model; channels-last makes the convolutions markedly faster on CPUs (same numbers)."""
    model = A3Clstm(1, num_actions, cfg.hidden_size).to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model
