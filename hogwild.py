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
        self.staging: list[torch.Tensor] = []  # pinned copies of the shared weights, for a GPU's pull
        self.grads: list[torch.Tensor] = []  # allocated on the first push: the test process never pushes
        self.norm: torch.Tensor | None = None

    def pull(self) -> None:
        """The shared weights into the worker's model. To a GPU through pinned buffers, without waiting: a copy
        from pageable memory waits for the device, once per parameter. The buffers are refilled at the next
        pull, after a device wait (the push's, an acting step's); a copy that still read one would take a mix of
        two snapshots of the weights, as Hogwild takes anyway from writers that do not lock."""
        with torch.no_grad():
            if not self.pin:
                for local, shared in zip(self.local, self.shared):
                    local.copy_(shared)
                return
            if not self.staging:
                self.staging = [torch.empty(p.shape, dtype=p.dtype, pin_memory=True) for p in self.shared]
            for stage, local, shared in zip(self.staging, self.local, self.shared):
                local.copy_(stage.copy_(shared), non_blocking=True)

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
