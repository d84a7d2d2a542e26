"""A3G paths on a real GPU; skipped where torch sees no CUDA device (CI has none)."""

import os
import re
import shutil

import pytest
import torch

import mps
from agent import Agent
from checkpoint import load_checkpoint
from environment import make_env
from model import A3Clstm
from shared import SharedLink
from tests.helpers import run_cli, start_cli
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


@pytest.mark.parametrize("bf16", [False, True])
def test_a_cuda_graphed_agent_acts_as_the_eager_forward_and_reads_the_weights_pulled_into_it(bf16):
    gpu = torch.device("cuda", 0)
    torch.manual_seed(0)
    model = A3Clstm(1, 2, 32).to(gpu).to(memory_format=torch.channels_last)
    envs = [make_env("tests.pixel_envs:Cue-v0", max_episode_length=7) for _ in range(2)]
    agent = Agent(model, envs, gpu, seed=3, bf16=bf16, cuda_graph=True)
    starts = 0
    with torch.no_grad():
        for step in range(20):
            if step == 10:  # as SharedLink.pull: new weights copied into the captured parameters
                for p in model.parameters():
                    p.mul_(1.5)
            graphed = agent.forward()
            eager = agent._forward(agent.obs, agent.starts, agent.state)
            for a, b in zip((graphed[0], graphed[1], *graphed[2]), (eager[0], eager[1], *eager[2])):
                torch.testing.assert_close(a, b)
            starts += int(agent.starts.sum())
            actions, _, _ = agent.act(greedy=False)
            agent.step(actions)
    assert starts > 2, "the episode starts' zeroing went untested"
    agent.close()


@pytest.mark.parametrize("extra", [[], ["--cuda-graph"]])
def test_a3g_training_run(tmp_path, extra):
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
        *extra,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert load_checkpoint(str(tmp_path / "PongNoFrameskip-v4.dat")).frames >= 5000


def mps_server_running() -> bool:
    """Whether an nvidia-cuda-mps-server runs: the control daemon starts one once a client connects."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "nvidia-cuda-mps-server":
                    return True
        except OSError:
            continue
    return False


@pytest.mark.skipif(shutil.which("nvidia-cuda-mps-control") is None, reason="needs NVIDIA's MPS tools")
def test_a_run_sharing_a_gpu_starts_its_own_mps_daemon_serves_its_workers_and_stops_it(tmp_path):
    if mps.daemon_owner(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", mps.DEFAULT_PIPE_DIR)) is not None:
        pytest.skip("an MPS daemon already runs here; this test is for a run that starts its own")
    run = start_cli(
        "main.py",
        *("--workers", 2, "--gpu-ids", 0, "--mps", "on", "--max-steps", 20000, "--progress-interval", 1),
        *("--log-dir", tmp_path / "logs", "--save-model-dir", tmp_path),
    )
    lines, served = [], False
    for line in run.stdout:
        lines.append(line)
        if " frames/s " in line and "updates 0 " not in line:
            served = served or mps_server_running()
    assert run.wait(60) == 0, "".join(lines)
    log = "".join(lines)
    started = re.search(r"CUDA MPS: started a daemon for 3 processes on GPU 0 \(pipe and log in (\S+)\)", log)
    assert started, log
    assert served, "no nvidia-cuda-mps-server ran while the workers trained"
    assert "CUDA MPS: stopped the run's daemon" in log
    assert not os.path.exists(started.group(1)) and not mps_server_running()
