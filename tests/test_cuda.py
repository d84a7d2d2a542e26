"""A3G paths on a real GPU; skipped where torch sees no CUDA device (CI has none)."""

import pytest
import torch

from checkpoint import load_checkpoint
from model import A3Clstm
from shared import SharedLink
from tests.helpers import run_cli
from train import apply_update

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_gradients_from_a_gpu_worker_update_the_cpu_shared_model():
    torch.manual_seed(0)
    shared = A3Clstm(1, 6, 64).share_memory()
    gpu = torch.device("cuda", 0)
    local = A3Clstm(1, 6, 64).to(gpu)
    link = SharedLink(shared, local, gpu)
    optimizer = torch.optim.SGD(shared.parameters(), lr=1.0)
    x = torch.randn(2, 1, 80, 80)
    for scale in (1.0, -2.0):
        link.pull()
        for a, b in zip(local.parameters(), shared.parameters()):
            torch.testing.assert_close(a.cpu(), b.detach())
        before = [p.detach().clone() for p in shared.parameters()]
        value, logits, _ = local(x.to(gpu), local.initial_state(2, gpu))
        assert apply_update(local, link, optimizer, scale * (value.sum() + logits.pow(2).sum()), 0)
        for p, b, lp in zip(shared.parameters(), before, local.parameters()):
            torch.testing.assert_close(p.detach(), b - lp.grad.cpu())
        assert all(buffer.is_pinned() for buffer in link.grads)


def test_an_update_from_a_gpu_waits_for_the_device_once_and_never_implicitly():
    gpu = torch.device("cuda", 0)
    shared = A3Clstm(1, 6, 64).share_memory()
    local = A3Clstm(1, 6, 64).to(gpu)
    link = SharedLink(shared, local, gpu)
    optimizer = torch.optim.SGD(shared.parameters(), lr=0.1)
    x = torch.randn(2, 1, 80, 80, device=gpu)
    for max_grad_norm in (0.0, 0.5):
        value, logits, _ = local(x, local.initial_state(2, gpu))
        torch.cuda.set_sync_debug_mode("error")  # an implicit wait (.item(), a tensor in an `if`) raises
        try:
            assert apply_update(local, link, optimizer, value.sum() + logits.pow(2).sum(), max_grad_norm)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_a3g_training_run(tmp_path):
    result = run_cli(
        "main.py",
        "--env",
        "PongNoFrameskip-v4",
        "--workers",
        2,
        "--gpu-ids",
        0,
        "--envs-per-worker",
        2,
        "--max-steps",
        5000,
        "--log-dir",
        tmp_path / "logs",
        "--save-model-dir",
        tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert load_checkpoint(str(tmp_path / "PongNoFrameskip-v4.dat")).frames >= 5000
