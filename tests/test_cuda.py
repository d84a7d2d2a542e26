"""A3G paths on a real GPU; skipped where torch sees no CUDA device (CI has none)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import mps
from agent import Agent, policy_step
from checkpoint import load_checkpoint
from environment import make_env
from hogwild import SharedLink
from model import A3Clstm
from proctree import find_titled
from tests.helpers import ROOT, run_cli, start_cli, wait_for
from tests.test_faults import finish, has_trained, launch, log_of
from train import apply_update

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
def test_gradients_from_a_gpu_worker_update_the_cpu_shared_model(channels_last):
    """Channels-last (the workers' layout) pulls and pushes through temporaries of the other layout."""
    torch.manual_seed(0)
    shared = A3Clstm(1, 6, 64).share_memory()
    gpu = torch.device("cuda", 0)
    local = A3Clstm(1, 6, 64).to(gpu, memory_format=torch.channels_last if channels_last else torch.preserve_format)
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
        assert all(buffer.is_pinned() for buffer in link.grads + link.staging)


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
            eager = policy_step(agent.model, agent.obs, agent.starts, agent.state, agent.bf16)
            for a, b in zip((graphed[0], graphed[1], *graphed[2]), (eager[0], eager[1], *eager[2])):
                torch.testing.assert_close(a, b)
            starts += int(agent.starts.sum())
            actions, _, _ = agent.act(greedy=False)
            agent.step(actions)
    assert starts > 2, "the episode starts' zeroing went untested"
    agent.close()


@pytest.mark.parametrize("extra", [[], ["--cuda-graph", "off"]])
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
    """Whether an nvidia-cuda-mps-server runs: the control daemon starts one once a client connects. Read from
    each process's command line: /proc/PID/comm keeps only a name's first 15 characters."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                program = f.read().split(b"\0")[0]
        except OSError:
            continue
        if os.path.basename(program) == b"nvidia-cuda-mps-server":
            return True
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
    started = re.search(r"CUDA MPS: started a daemon for 3 processes on GPU 0 \(pipe and log in ([^;)\s]+)", log)
    assert started, log
    assert served, "no nvidia-cuda-mps-server ran while the workers trained"
    assert "CUDA MPS: stopped the run's daemon" in log
    assert not os.path.exists(started.group(1)) and not mps_server_running()


ON_GPU_1 = """
import sys, torch
from model import A3Clstm
from hogwild import SharedLink
from process import init_process
from train import apply_update
gpu = torch.device("cuda", 1)
init_process("a3c gpu-1 probe", 1, gpu)
shared = A3Clstm(1, 6, 64).share_memory()
local = A3Clstm(1, 6, 64).to(gpu)
link = SharedLink(shared, local, gpu)  # pinned buffers, a device wait: what would touch GPU 0
link.pull()
value, logits, _ = local(torch.randn(2, 1, 80, 80, device=gpu), local.initial_state(2, gpu))
apply_update(local, link, torch.optim.SGD(shared.parameters(), lr=0.1), value.sum() + logits.sum(), 0.0)
torch.cuda.synchronize(gpu)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(torch.cuda.device_count() < 2 or shutil.which("nvidia-smi") is None, reason="needs 2 GPUs")
def test_a_process_on_gpu_1_creates_no_context_on_gpu_0():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUDA_MPS")}
    env["CUDA_MPS_PIPE_DIRECTORY"] = "/nonexistent"  # off MPS: nvidia-smi then lists the process on each GPU
    probe = subprocess.Popen(
        [sys.executable, "-c", ON_GPU_1], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert probe.stdout.readline().strip() == "ready"
        apps = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,gpu_uuid", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows = [[field.strip() for field in line.split(",")] for line in apps.splitlines()]
        uuids = [uuid for pid, uuid in rows if pid == str(probe.pid)]  # nvidia-smi's are "GPU-<torch's uuid>"
        assert len(uuids) == 1 and uuids[0].endswith(str(torch.cuda.get_device_properties(1).uuid)), apps
    finally:
        probe.stdin.close()
        probe.wait(30)


def test_a_whole_worker_update_on_a_gpu_waits_once_per_agent_step_and_once_for_the_push():
    import traceback
    import warnings
    from collections import Counter

    from run_setup import build_run
    from settings import Config
    from train import Worker

    cfg = Config(env="PongNoFrameskip-v4", workers=1, gpu_ids=(0,), num_steps=20)
    worker = Worker(0, build_run(cfg, 6, None, logger=None))
    worker.update()  # warm-up: lazy initialisations may wait
    waits = Counter()  # where each wait came from: the innermost three frames of the repo's code

    def record(message, *_):
        if "synchroniz" in str(message):
            ours = [frame for frame in traceback.extract_stack()[:-1] if frame.filename.startswith(ROOT)]
            waits["".join(traceback.format_list(ours[-3:]))] += 1

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            applied, _ = worker.update()
    finally:
        torch.cuda.set_sync_debug_mode("default")
        worker.close()
    assert applied
    # each step's actions go to the CPU for the envs (one wait); the push waits once; nothing else may
    assert waits.total() <= cfg.num_steps + 1, "\n".join(f"{n} waits at:\n{where}" for where, n in waits.most_common())


needs_mps = pytest.mark.skipif(
    shutil.which("nvidia-cuda-mps-control") is None or shutil.which("nvidia-smi") is None,
    reason="needs NVIDIA's MPS tools and nvidia-smi",
)


def plain_uuid(uuid) -> str:
    return str(uuid).lower().removeprefix("gpu-")


def run_python(script: str, env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="needs nvidia-smi")
def test_the_uuids_mps_resolves_cuda_visible_devices_to_are_the_gpus_cuda_numbers_so():
    count = torch.cuda.device_count()
    visible = ",".join(str(i) for i in reversed(range(count)))  # every GPU, in the reverse of PCI bus order
    out = run_python(
        """
        import json, torch, mps
        uuids = [str(torch.cuda.get_device_properties(n).uuid) for n in range(torch.cuda.device_count())]
        print(json.dumps([mps.probe().daemon_visible, uuids]))
        """,
        {"CUDA_VISIBLE_DEVICES": visible, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
    )
    daemon_visible, uuids = json.loads(out)
    assert [plain_uuid(u) for u in daemon_visible.split(",")] == [plain_uuid(u) for u in uuids]


WORKERS_UNDER_MPS = """
    import json, os, subprocess, sys
    import mps

    CHILD = "import torch; torch.ones(1, device='cuda'); print(torch.cuda.get_device_properties(0).uuid); input()"
    with mps.gpu_sharing("on", {0: 2}, lambda line, warning: print(line, flush=True)) as under_mps:
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
        children = [subprocess.Popen([sys.executable, "-u", "-c", CHILD], **pipes) for _ in range(2)]
        seen = [child.stdout.readline().strip() for child in children]
        print("workers", json.dumps([under_mps, seen]), flush=True)
        input()  # the test looks for the MPS server meanwhile
        for child in children:
            child.communicate("\\n")
"""


@needs_mps
def test_under_cuda_visible_devices_the_workers_of_the_run_s_daemon_play_on_the_launcher_s_gpu():
    if mps.daemon_owner(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", mps.DEFAULT_PIPE_DIR)) is not None:
        pytest.skip("an MPS daemon already runs here")
    last = torch.cuda.device_count() - 1
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(last), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    expected = run_python("import torch; print(torch.cuda.get_device_properties(0).uuid)", env).strip()
    launcher = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WORKERS_UNDER_MPS)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in launcher.stdout:
        lines.append(line)
        if line.startswith("workers "):
            break
    served = mps_server_running()
    out, _ = launcher.communicate("\n", timeout=60)
    assert launcher.returncode == 0, "".join(lines) + out
    assert "its GPUs CUDA_VISIBLE_DEVICES=GPU-" in lines[0], lines[0]
    under_mps, seen = json.loads(lines[-1].removeprefix("workers "))
    assert under_mps and [plain_uuid(u) for u in seen] == [plain_uuid(expected)] * 2
    assert served, "no nvidia-cuda-mps-server ran while the workers held their contexts"


@needs_mps
def test_a_gpu_worker_killed_under_mps_restarts_with_its_gpu_s_processes_and_the_run_goes_on(run_dirs):
    if mps.daemon_owner(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", mps.DEFAULT_PIPE_DIR)) is not None:
        pytest.skip("an MPS daemon already runs here; this test is for a run that starts its own")
    proc = launch(run_dirs, "--gpu-ids", 0, "--mps", "on")
    assert wait_for(lambda: find_titled(proc.pid, "a3c train 1") and has_trained(run_dirs), 120), log_of(run_dirs)
    titles = ("a3c test", "a3c train 0", "a3c train 1")
    before = {title: find_titled(proc.pid, title) for title in titles}
    os.kill(before["a3c train 1"][0], signal.SIGKILL)
    line = "train1 died (killed by SIGKILL) on cuda:0 under CUDA MPS"
    assert wait_for(lambda: line in log_of(run_dirs), 15), log_of(run_dirs)

    def restarted():
        return all(find_titled(proc.pid, t) and find_titled(proc.pid, t) != before[t] for t in titles)

    assert wait_for(restarted, 60), log_of(run_dirs)  # the whole GPU's processes, new
    updates = last_updates(run_dirs)
    assert wait_for(lambda: last_updates(run_dirs) > updates, 60), "no training after the restart"
    code, out = finish(proc)
    assert code == 0, out
    assert "restart 1 of 3" in out and "restart 2 of" not in out and "more than --max-restarts" not in out


def last_updates(run_dirs) -> int:
    """The updates the last progress line counts."""
    found = re.findall(r"\| updates ([\d,]+) \|", log_of(run_dirs))
    return int(found[-1].replace(",", "")) if found else 0
