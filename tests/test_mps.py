"""mps.py: the --mps decision, and the daemon's lifecycle as real processes.

This machine has no NVIDIA tools, so the lifecycle tests put tests/mps_stand_in first on PATH: a stand-in
for nvidia-cuda-mps-control with its documented interface (control socket, `quit`). The real daemon is
tested in test_cuda.py where CUDA is present.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

import mps
from mps import Machine, Plan, gpu_sharing, plan, shared_gpus
from tests.helpers import ROOT, run_cli, wait_for
from utils import UsageError

STAND_IN = os.path.join(ROOT, "tests", "mps_stand_in")
ME = os.getuid()


def machine(**changes) -> Machine:
    base = {"control": "/usr/bin/nvidia-cuda-mps-control", "pipe_dir": "/tmp/nvidia-mps", "daemon_uid": None}
    return Machine(**{**base, "uid": ME, "compute_modes": {}, "visible": None, "daemon_visible": None, **changes})


def test_processes_sharing_a_gpu_count_the_workers_round_the_ids_and_the_test_process_on_the_first():
    assert shared_gpus((0,), 16) == {0: 17}
    assert shared_gpus((0, 1, 2, 3), 8) == {0: 3, 1: 2, 2: 2, 3: 2}
    assert shared_gpus((0, 1), 2) == {0: 2}  # worker 0 and the test process
    assert shared_gpus((0, 1, 2), 2) == {0: 2}
    assert shared_gpus((-1,), 16) == {}
    assert shared_gpus((0,), 16, test=False) == {0: 16}  # bench, or a host other than 0: no test process
    assert shared_gpus((0,), 1, test=False) == {}


def test_the_plan_for_each_machine():
    shared = {0: 17}
    assert plan("auto", shared, machine()) == Plan("start", "CUDA MPS: started a daemon for 17 processes on GPU 0")
    assert plan("on", shared, machine(daemon_uid=ME)).action == "use"
    assert "using the running daemon in /tmp/nvidia-mps" in plan("auto", shared, machine(daemon_uid=ME)).line
    off = plan("off", shared, machine(daemon_uid=ME))
    assert (off.action, off.warning) == ("hide", False)  # said so: no warning
    for other in (machine(control=None), machine(daemon_uid=ME + 1)):
        hint = plan("auto", shared, other)
        assert (hint.action, hint.warning) == ("hide", True)
        assert "take turns on it" in hint.line and "\n" not in hint.line
        with pytest.raises(UsageError, match="^--mps on: .* or pass --mps auto"):
            plan("on", shared, other)
    assert "not installed" in plan("auto", shared, machine(control=None)).line
    assert f"another user's CUDA MPS daemon (uid {ME + 1})" in plan("auto", shared, machine(daemon_uid=ME + 1)).line


def test_root_s_daemon_serves_every_user_and_another_user_s_is_still_refused():
    user = 1000
    assert plan("on", {0: 3}, machine(uid=user, daemon_uid=0)).action == "use"
    refused = plan("auto", {0: 3}, machine(uid=user, daemon_uid=user + 1))
    assert refused.action == "hide" and f"another user's CUDA MPS daemon (uid {user + 1})" in refused.line


def test_under_cuda_visible_devices_a_running_daemon_is_not_trusted_and_the_run_starts_its_own():
    for owner in (ME, 0):
        narrowed = machine(daemon_uid=owner, visible="1", daemon_visible="GPU-b")
        assert plan("on", {0: 3}, narrowed) == Plan(
            "start",
            "CUDA MPS: not using the running daemon in /tmp/nvidia-mps, which may serve other GPUs than "
            "CUDA_VISIBLE_DEVICES=1 selects: started one of the run's own for 3 processes on GPU 0",
        )
    assert plan("auto", {0: 3}, machine(visible="1", daemon_visible="GPU-b")).line.endswith(
        "started a daemon for 3 processes on GPU 0"
    )
    assert plan("auto", {0: 3}, machine(daemon_uid=ME + 1, visible="1", daemon_visible="GPU-b")).action == "hide"


def test_a_gpu_in_exclusive_process_mode_without_mps_is_an_error_whatever_the_mode():
    exclusive = {"compute_modes": {0: "Exclusive_Process"}}
    assert plan("auto", {0: 3}, machine(**exclusive)).action == "start"  # what MPS is for there
    for mode, other in [("auto", machine(control=None, **exclusive)), ("off", machine(**exclusive))]:
        with pytest.raises(UsageError, match="^GPU 0 is in exclusive-process mode"):
            plan(mode, {0: 3}, other)


# ---------------------------------------------------------------- the run's GPUs, with a stand-in nvidia-smi

A, B, C = (f"GPU-{head}-1111-2222-3333-444455556666" for head in ("aaaa1111", "bbbb2222", "aaaa3333"))
GPUS = [  # in nvidia-smi's index order; in PCI bus order they are B, A, C
    {"uuid": A, "pci.bus_id": "00000000:41:00.0", "compute_mode": "Default"},
    {"uuid": B, "pci.bus_id": "00000000:07:00.0", "compute_mode": "Exclusive_Process"},
    {"uuid": C, "pci.bus_id": "00000000:C1:00.0", "compute_mode": "Default"},
]


def probed(monkeypatch, visible: str | None, pci_order: bool, gpus: list[dict] | None = GPUS) -> Machine:
    """mps.probe() on a machine whose nvidia-smi lists `gpus` (None: nvidia-smi fails), in that environment."""
    monkeypatch.setenv("PATH", STAND_IN + os.pathsep + os.environ["PATH"])
    for name, value in {
        "NVIDIA_SMI_STAND_IN": None if gpus is None else json.dumps(gpus),
        "CUDA_VISIBLE_DEVICES": visible,
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID" if pci_order else None,
    }.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return mps.probe()


@pytest.mark.parametrize(
    "visible, pci_order, modes, daemon_visible",
    [
        (None, True, {0: "Exclusive_Process", 1: "Default", 2: "Default"}, None),
        (None, False, {}, None),  # CUDA's default order: any ordinal may be any GPU, and their modes differ
        ("GPU-bbbb,GPU-aaaa3", False, {0: "Exclusive_Process", 1: "Default"}, f"{B},{C}"),  # prefixes
        (C, False, {0: "Default"}, C),
        ("2,0", True, {0: "Default", 1: "Exclusive_Process"}, f"{C},{B}"),  # indices count in PCI bus order
        ("2,0", False, {}, "2,0"),  # unknown GPUs: the daemon reads the indices as the launcher does
        ("GPU-aaaa", True, {}, "GPU-aaaa"),  # two GPUs start so: CUDA takes it for none
        ("MIG-1234,1", True, {1: "Default"}, "MIG-1234,1"),
    ],
)
def test_the_run_s_cuda_ordinals_are_mapped_to_gpus_by_uuid(monkeypatch, visible, pci_order, modes, daemon_visible):
    machine = probed(monkeypatch, visible, pci_order)
    assert (machine.compute_modes, machine.visible, machine.daemon_visible) == (modes, visible, daemon_visible)


def test_where_the_order_is_unknown_a_mode_all_gpus_share_is_known(monkeypatch):
    alike = [{**gpu, "compute_mode": "Default"} for gpu in GPUS]
    assert probed(monkeypatch, "1", False, alike).compute_modes == {0: "Default"}
    assert probed(monkeypatch, None, False, alike).compute_modes == {0: "Default", 1: "Default", 2: "Default"}
    assert probed(monkeypatch, "0", False, GPUS[:1]).daemon_visible == A  # one GPU: no order to know
    failed = probed(monkeypatch, "0", True, None)  # nvidia-smi fails: nothing known
    assert (failed.compute_modes, failed.daemon_visible) == ({}, "0")


def test_the_exclusive_check_reads_the_gpu_cuda_visible_devices_selects(monkeypatch):
    """GPU 0 of the run is B here, nvidia-smi's index 1: its exclusive-process mode must be seen."""
    with pytest.raises(UsageError, match="^GPU 0 is in exclusive-process mode"):
        plan("off", {0: 2}, probed(monkeypatch, "GPU-bbbb", False))
    assert plan("off", {0: 2}, probed(monkeypatch, A, False)).action == "hide"


def test_a_bad_mps_value_is_one_line_and_exit_2(tmp_path):
    done = run_cli("main.py", "--mps", "sometimes", "--log-dir", tmp_path, "--save-model-dir", tmp_path)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: argument --mps: invalid choice: 'sometimes'") and "auto" in line
    from api import train
    from settings import Config

    with pytest.raises(UsageError, match="^--mps must be one of auto, on, off, got 'sometimes'$"):
        train(Config(mps="sometimes", log_dir=str(tmp_path), save_model_dir=str(tmp_path)))


def test_without_the_tools_a_run_warns_once_and_keeps_its_workers_off_any_daemon(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-cuda-mps-control, even on a GPU box
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    lines = []
    with gpu_sharing("auto", {0: 3}, lambda line, warning: lines.append((line, warning))):
        pipe_dir = os.environ["CUDA_MPS_PIPE_DIRECTORY"]
        assert os.listdir(pipe_dir) == []  # the workers find no daemon there
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ and not os.path.exists(pipe_dir)
    assert len(lines) == 1 and lines[0][1] and "nvidia-cuda-mps-control is not installed" in lines[0][0]
    with pytest.raises(UsageError, match="^--mps on: nvidia-cuda-mps-control is not installed"):
        with gpu_sharing("on", {0: 3}, lambda *_: None):
            pass


# ---------------------------------------------------------------- lifecycle, with the stand-in daemon

LAUNCHER = textwrap.dedent(
    """
    import json, os, sys, time
    sys.path.insert(0, {root!r})
    import mps

    with mps.gpu_sharing(sys.argv[1], {{0: 3}}, lambda line, warning: print(line, flush=True)) as under_mps:
        print("workers", json.dumps([under_mps, os.environ.get("CUDA_VISIBLE_DEVICES")]), flush=True)
        print("pipe", os.environ["CUDA_MPS_PIPE_DIRECTORY"], flush=True)
        if sys.argv[2] == "crash":
            raise RuntimeError("a crash in the run")
        if sys.argv[2] == "wait":
            time.sleep(120)
    print("after", json.dumps(os.environ.get("CUDA_VISIBLE_DEVICES")), flush=True)
    """
)


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setenv("PATH", STAND_IN + os.pathsep + os.environ["PATH"])
    for name in ("CUDA_MPS_PIPE_DIRECTORY", "MPS_STAND_IN_REFUSE", "CUDA_VISIBLE_DEVICES", "NVIDIA_SMI_STAND_IN"):
        monkeypatch.delenv(name, raising=False)


def start_launcher(mode: str, how: str) -> tuple[subprocess.Popen, str, list[str]]:
    """A process that holds gpu_sharing as the launcher does; returns it, its workers' pipe dir and its lines
    so far (the last but one: "workers [whether they are MPS clients, their CUDA_VISIBLE_DEVICES]")."""
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER.format(root=ROOT), mode, how],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # a shell's background job (`.ci/run &`) ignores SIGINT, and Python keeps an ignored SIGINT ignored:
        # the Ctrl-C these tests send must reach the launcher as it reaches one started from a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler),
    )
    lines = []
    for line in launcher.stdout:
        lines.append(line)
        if line.startswith("pipe "):
            return launcher, line.split()[1], lines
    raise AssertionError("".join(lines))


def daemon_pid(pipe_dir: str) -> int:
    with open(os.path.join(pipe_dir, "stand-in.pid")) as f:
        return int(f.read())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("end", ["normal", "crash", "ctrl-c", "sigkill"])
def test_a_daemon_started_for_the_run_stops_however_the_run_ends(stand_in, end):
    launcher, pipe_dir, lines = start_launcher("auto", "wait" if end in ("ctrl-c", "sigkill") else end)
    assert "CUDA MPS: started a daemon for 3 processes on GPU 0" in lines[0]
    pid = daemon_pid(pipe_dir)
    if end == "ctrl-c":
        os.killpg(launcher.pid, signal.SIGINT)
    elif end == "sigkill":
        launcher.kill()  # no cleanup in the launcher: its guard sees its stdin end
    launcher.wait(60)
    rest = launcher.stdout.read()
    assert wait_for(lambda: not alive(pid), 30), f"the daemon {pid} outlived the run"
    root = os.path.dirname(pipe_dir)
    assert wait_for(lambda: not os.path.exists(root), 10), f"{root} was left behind"
    if end != "sigkill":
        assert "CUDA MPS: stopped the run's daemon" in rest
    if end == "crash":
        assert "RuntimeError: a crash in the run" in rest


def test_a_control_socket_that_takes_packets_answers_and_one_nobody_listens_on_does_not(tmp_path, monkeypatch):
    """NVIDIA does not document the control socket's type: a packet socket is found as a stream one is."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no client to ask: the socket alone decides
    control = str(tmp_path / "control")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as server:
        server.bind(control)
        server.listen()
        assert mps.connect_error(control) is None and mps.daemon_owner(str(tmp_path)) == ME
    assert mps.describe_error(mps.connect_error(control)) == "connect: Connection refused"  # the file stays
    assert mps.daemon_owner(str(tmp_path)) is None
    assert mps.describe_error(mps.connect_error(str(tmp_path / "none"))) == "connect: No such file or directory"


@pytest.fixture
def running_daemon(stand_in, tmp_path, monkeypatch):
    """A daemon of ours that runs before the run, in the pipe directory the workers would look in."""
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(tmp_path / "log")}
    for path in env.values():
        os.makedirs(path)
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", env["CUDA_MPS_PIPE_DIRECTORY"])
    subprocess.run(["nvidia-cuda-mps-control", "-d"], env={**os.environ, **env}, check=True)
    assert wait_for(lambda: mps.daemon_owner(env["CUDA_MPS_PIPE_DIRECTORY"]) == ME, 10)
    yield env["CUDA_MPS_PIPE_DIRECTORY"]
    subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, env={**os.environ, **env})


def workers_env(lines: list[str]) -> list:
    return json.loads(lines[-2].removeprefix("workers "))


def test_a_running_daemon_is_used_and_left_running(running_daemon):
    launcher, pipe_dir, lines = start_launcher("on", "normal")
    assert launcher.wait(60) == 0
    assert pipe_dir == running_daemon
    assert f"CUDA MPS: using the running daemon in {pipe_dir}" in lines[0]
    assert workers_env(lines) == [True, None]
    assert mps.daemon_owner(pipe_dir) == ME  # still up: it is not the run's


def test_under_cuda_visible_devices_the_run_s_daemon_takes_them_as_uuids_and_its_workers_none(stand_in, monkeypatch):
    monkeypatch.setenv("NVIDIA_SMI_STAND_IN", json.dumps(GPUS))
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    launcher, pipe_dir, lines = start_launcher("on", "wait")
    with open(os.path.join(pipe_dir, "stand-in.visible")) as f:
        assert json.load(f) == f"{C},{B}"  # the launcher's cuda:0 and cuda:1, in that order
    assert workers_env(lines) == [True, None]  # as MPS clients must: their cuda:N is the daemon's, the launcher's
    assert f"; its GPUs CUDA_VISIBLE_DEVICES={C},{B}, unset for its clients, the workers); it stops" in lines[0]
    os.killpg(launcher.pid, signal.SIGINT)
    launcher.wait(60)


def test_under_cuda_visible_devices_a_running_daemon_is_left_alone_and_the_run_starts_its_own(
    running_daemon, monkeypatch
):
    monkeypatch.setenv("NVIDIA_SMI_STAND_IN", json.dumps(GPUS[:1]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    launcher, pipe_dir, lines = start_launcher("on", "normal")
    assert launcher.wait(60) == 0
    assert pipe_dir != running_daemon and workers_env(lines) == [True, None]
    assert lines[0].startswith(
        f"CUDA MPS: not using the running daemon in {running_daemon}, which may serve other GPUs than "
        f"CUDA_VISIBLE_DEVICES=0 selects: started one of the run's own for 3 processes on GPU 0 (pipe and log in "
    )
    assert f"its GPUs CUDA_VISIBLE_DEVICES={A}," in lines[0]
    assert launcher.stdout.read().strip().splitlines()[-1] == 'after "0"'  # the launcher's own, restored
    assert mps.daemon_owner(running_daemon) == ME

    monkeypatch.setenv("MPS_STAND_IN_REFUSE", "An instance of this daemon is already running")
    launcher, pipe_dir, lines = start_launcher("auto", "normal")
    assert launcher.wait(60) == 0
    assert "its daemon did not start (nvidia-cuda-mps-control -d exited with code 1: An instance" in lines[0]
    assert os.path.basename(pipe_dir).startswith("a3c-no-mps-")  # an empty one: the workers run without MPS
    assert workers_env(lines) == [False, "0"]


def test_a_daemon_that_may_not_start_is_one_warning_in_auto_and_an_error_with_on(stand_in, monkeypatch):
    monkeypatch.setenv("MPS_STAND_IN_REFUSE", "An instance of this daemon is already running")
    lines = []
    with gpu_sharing("auto", {0: 3}, lambda line, warning: lines.append((line, warning))):
        assert os.listdir(os.environ["CUDA_MPS_PIPE_DIRECTORY"]) == []
    assert len(lines) == 1 and lines[0][1]
    assert "its daemon did not start (nvidia-cuda-mps-control -d exited with code 1: An instance" in lines[0][0]
    assert "nvidia-cuda-mps-control -d` as a user allowed to" in lines[0][0]
    with pytest.raises(UsageError, match="^--mps on: its daemon did not start"):
        with gpu_sharing("on", {0: 3}, lambda *_: None):
            pass
