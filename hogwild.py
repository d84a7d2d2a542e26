"""The Hogwild hand-off between a process's own model and the run's shared one: weights in, gradients out."""

from __future__ import annotations

import math

import torch

from model import A3Clstm


class SharedLink:
    """Copies shared weights into the worker's model and the worker's gradients into the shared model.

    Gradients are copied into this worker's own CPU buffers (pinned when the model is on a GPU)
    and handed to the shared parameters on every update. The classic alias-once pattern breaks on
    torch >= 2.0, where zero_grad() drops the grad tensors the shared model still points at.
    """

    def __init__(self, shared: A3Clstm, local: A3Clstm, device: torch.device):
        self.shared = list(shared.parameters())
        self.local = list(local.parameters())
        self.device = device
        self.pin = device.type == "cuda"
        self.grads: list[torch.Tensor] = []  # allocated on the first push: the test process never pushes
        self.norm: torch.Tensor | None = None

    def pull(self) -> None:
        with torch.no_grad():
            for local, shared in zip(self.local, self.shared):
                local.copy_(shared)

    def push(self, norm: torch.Tensor) -> float:
        """Hand the gradients to the shared model unless `norm` (their total norm) is not finite; returns it as
        a float. From a GPU all copies, the norm's too, are queued without waiting, then one wait."""
        if not self.grads:
            self.grads = [torch.zeros(p.shape, pin_memory=self.pin) for p in self.shared]
            self.norm = torch.zeros((), pin_memory=self.pin)
        for buffer, local, shared in zip(self.grads, self.local, self.shared):
            shared.grad = None if local.grad is None else buffer.copy_(local.grad, non_blocking=self.pin)
        self.norm.copy_(norm, non_blocking=self.pin)
        if self.pin:
            torch.cuda.synchronize(self.device)
        value = float(self.norm)
        if not math.isfinite(value):
            for shared in self.shared:
                shared.grad = None
        return value
