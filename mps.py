"""CUDA MPS for A3G runs: several workers on one GPU run at once only under NVIDIA's MPS daemon.

Each worker is a process with its own CUDA context, and without MPS the GPU runs one context at a time:
16 A3G workers on one H100 ran at 3,400 frames/s that way, slower than 16 CPU workers (6,000), and at
10,000-11,000 under MPS. So when two or more of a run's processes share a GPU, `--mps auto` uses a running daemon,
or starts one of its own in private pipe and log directories for the length of the run; where that
cannot be done it says so in one line and trains without. `--mps on` makes that an error before any
worker starts; `--mps off` keeps the workers off any daemon.

A daemon of our own is owned by a guard process (`python mps.py guard`): it starts the daemon, and stops
it once the launcher closes its stdin, which also happens when the launcher is killed, so that no daemon
outlives its run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

from utils import UsageError

MODES = ("auto", "on", "off")
CONTROL = "nvidia-cuda-mps-control"
DEFAULT_PIPE_DIR = "/tmp/nvidia-mps"  # where the CUDA driver looks without CUDA_MPS_PIPE_DIRECTORY
ENV_KEYS = ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 60.0
COST = "they take turns on it (16 A3G workers on one H100: 3,400 frames/s without MPS, 10,000-11,000 with)"
START_IT = f"start it with `{CONTROL} -d` as a user allowed to (root or the GPU's owner)"


def shared_gpus(gpu_ids: tuple[int, ...], workers: int) -> dict[int, int]:
    """The GPUs that two or more of the run's processes share, with their process counts: the workers go
    round `gpu_ids`, and the test process plays on the first."""
    if gpu_ids == (-1,):
        return {}
    counts = Counter(gpu_ids[rank % len(gpu_ids)] for rank in range(workers))
    counts[gpu_ids[0]] += 1
    return {gpu: n for gpu, n in sorted(counts.items()) if n >= 2}


def describe(shared: dict[int, int]) -> str:
    return ", ".join(f"{n} processes on GPU {gpu}" for gpu, n in shared.items())


@dataclass(frozen=True)
class Machine:
    """What this machine offers for MPS (probe() reads it; plan() decides from it)."""

    control: str | None  # path of nvidia-cuda-mps-control, None where it is not installed
    pipe_dir: str  # where the driver looks for a daemon
    daemon_uid: int | None  # owner of the daemon there, None where none runs
    uid: int
    compute_modes: dict[int, str]  # nvidia-smi's compute mode per GPU (Default, Exclusive_Process, ...)


def daemon_owner(pipe_dir: str) -> int | None:
    """The uid of the daemon whose control socket is in `pipe_dir` and answers, else None."""
    path = os.path.join(pipe_dir, "control")
    with socket.socket(socket.AF_UNIX) as probe_socket:
        try:
            probe_socket.connect(path)
        except OSError:
            return None
    return os.stat(path).st_uid


def compute_modes() -> dict[int, str]:
    """nvidia-smi's compute mode of each GPU; empty where nvidia-smi is missing or fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {}
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,compute_mode", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    modes = {}
    for line in out.splitlines():
        index, _, mode = line.partition(",")
        if index.strip().isdigit():
            modes[int(index)] = mode.strip()
    return modes


def probe() -> Machine:
    pipe_dir = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", DEFAULT_PIPE_DIR)
    return Machine(shutil.which(CONTROL), pipe_dir, daemon_owner(pipe_dir), os.getuid(), compute_modes())


@dataclass(frozen=True)
class Plan:
    action: str  # "use" a running daemon, "start" one, or "hide" any daemon and train without
    line: str  # what the log says
    warning: bool = False


def plan(mode: str, shared: dict[int, int], machine: Machine) -> Plan:
    """What to do for workers sharing GPUs (`shared`, not empty), in `mode`; a UsageError where the run
    cannot work: --mps on without MPS, or a GPU in exclusive-process mode (one process only, without MPS)."""
    workers = describe(shared)
    exclusive = exclusive_gpus(shared, machine)
    if mode == "off":
        if exclusive:
            raise UsageError(exclusive_error(exclusive, "--mps off keeps the workers off MPS"))
        return Plan("hide", f"--mps off: {workers} without CUDA MPS: {COST}")
    if machine.daemon_uid == machine.uid:
        return Plan("use", f"CUDA MPS: using the running daemon in {machine.pipe_dir} for {workers}")
    if machine.daemon_uid is not None:
        reason = f"another user's CUDA MPS daemon (uid {machine.daemon_uid}) runs in {machine.pipe_dir}"
        return cannot(mode, shared, exclusive, reason, "ask its owner to stop it (`echo quit | " + CONTROL + "`)")
    if machine.control is None:
        reason = f"{CONTROL} is not installed"
        return cannot(mode, shared, exclusive, reason, "install the NVIDIA driver's CUDA MPS tools")
    return Plan("start", f"CUDA MPS: started a daemon for {workers}")


def exclusive_gpus(shared: dict[int, int], machine: Machine) -> list[int]:
    return [gpu for gpu in shared if machine.compute_modes.get(gpu) == "Exclusive_Process"]


def cannot(mode: str, shared: dict[int, int], exclusive: list[int], reason: str, how: str) -> Plan:
    """MPS is out of reach for `reason`: train without it (one warning), or the error --mps on asks for."""
    if exclusive:
        raise UsageError(exclusive_error(exclusive, reason))
    if mode == "on":
        raise UsageError(f"--mps on: {reason}: {how}, or pass --mps auto to train without MPS")
    return Plan(
        "hide",
        f"warning: {describe(shared)} without CUDA MPS ({reason}), so {COST}: {how}, or --mps off to say so",
        warning=True,
    )


def exclusive_error(gpus: list[int], reason: str) -> str:
    ids = ", ".join(map(str, gpus))
    return (
        f"GPU {ids} is in exclusive-process mode, where processes can share a GPU only under CUDA MPS, and {reason}: "
        "give each process its own GPU, or set the default compute mode (`nvidia-smi -c DEFAULT`)"
    )


class MpsError(Exception):
    """Our daemon did not start (not permitted, no GPU, ...): the reason, with the tail of its log."""


class Daemon:
    """A control daemon of our own in private pipe and log directories, owned by a guard process."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="a3c-mps-")
        self.pipe_dir, self.log_dir = (os.path.join(self.root, name) for name in ("pipe", "log"))
        self.guard = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "guard", self.root],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a Ctrl-C at the terminal reaches the launcher, which stops the run first
        )
        answer = self.guard.stdout.readline().strip()
        if answer != "ready":
            self.guard.stdin.close()
            self.guard.wait(STOP_TIMEOUT)
            raise MpsError(answer.removeprefix("failed: ") or f"its guard exited with code {self.guard.returncode}")

    def env(self) -> dict[str, str]:
        return dict(zip(ENV_KEYS, (self.pipe_dir, self.log_dir)))

    def stop(self) -> str:
        """Ask the guard to stop the daemon and wait for it; returns what the guard says it did."""
        self.guard.stdin.close()
        try:
            self.guard.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.guard.kill()
            return f"the daemon did not stop within {STOP_TIMEOUT:g} s; its pipe directory is {self.pipe_dir}"
        return self.guard.stdout.read().strip()


@contextmanager
def environment(values: dict[str, str]):
    """os.environ with `values` (inherited by the workers started meanwhile), restored afterwards."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def gpu_sharing(mode: str, shared: dict[int, int], log):
    """The run's MPS, for the length of the `with` block: `log(line, warning)` says which case happened.
    Raises UsageError before anything starts where the run cannot go on (see plan)."""
    if not shared:
        if mode == "on":
            log("--mps on: no two processes share a GPU, so the run needs no CUDA MPS", False)
        yield
        return
    machine = probe()
    decision = plan(mode, shared, machine)
    daemon = None
    if decision.action == "start":
        try:
            daemon = Daemon()
        except MpsError as e:
            exclusive = exclusive_gpus(shared, machine)
            decision = cannot(mode, shared, exclusive, f"its daemon did not start ({e})", START_IT)
        else:
            decision = Plan("start", f"{decision.line} (pipe and log in {daemon.root}); it stops when the run ends")
    log(decision.line, decision.warning)
    values = daemon.env() if daemon else {}
    if decision.action == "hide":
        values = {ENV_KEYS[0]: tempfile.mkdtemp(prefix="a3c-no-mps-")}  # no daemon there: the workers run without
    try:
        with environment(values):
            yield
    finally:
        if daemon is not None:
            log(f"CUDA MPS: {daemon.stop()}", False)
        elif decision.action == "hide":
            shutil.rmtree(values[ENV_KEYS[0]], ignore_errors=True)


# ---------------------------------------------------------------- the guard process


def run_control(args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    control = shutil.which(CONTROL)
    if control is None:
        raise OSError(f"{CONTROL} is not installed")
    return subprocess.run(
        [control, *args], input=stdin, env={**os.environ, **env}, capture_output=True, text=True, timeout=STOP_TIMEOUT
    )


def log_tail(log_dir: str) -> str:
    try:
        with open(os.path.join(log_dir, "control.log")) as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    return f"; its log: {lines[-1]}" if lines else ""


def start_daemon(env: dict[str, str]) -> str | None:
    """Start the daemon and wait for its control socket; None when it is up, else why not."""
    pipe_dir, log_dir = env[ENV_KEYS[0]], env[ENV_KEYS[1]]
    try:
        done = run_control(["-d"], env)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{CONTROL} -d could not run: {e}"
    if done.returncode != 0:
        text = (done.stderr or done.stdout).strip().splitlines()
        return f"{CONTROL} -d exited with code {done.returncode}" + (f": {text[-1]}" if text else "")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if daemon_owner(pipe_dir) is not None:
            return None
        time.sleep(0.1)
    return f"no control socket in {pipe_dir} after {START_TIMEOUT:g} s{log_tail(log_dir)}"


def stop_daemon(env: dict[str, str]) -> str | None:
    """`quit` to the daemon (it waits for its clients to finish), then wait for its control socket to go;
    None once it is gone, else why it is still there."""
    pipe_dir = env[ENV_KEYS[0]]
    try:
        run_control([], env, stdin="quit\n")
    except (OSError, subprocess.SubprocessError) as e:
        return f"could not ask the daemon in {pipe_dir} to quit: {e}"
    deadline = time.monotonic() + STOP_TIMEOUT
    while daemon_owner(pipe_dir) is not None:
        if time.monotonic() > deadline:
            return f"the daemon in {pipe_dir} did not quit within {STOP_TIMEOUT:g} s (a client still runs?)"
        time.sleep(0.1)
    return None


def guard(root: str) -> int:
    """Start a daemon in root/pipe and root/log, say `ready` (or `failed: why`), stop it at stdin's end."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # only the end of stdin stops the guard
    env = dict(zip(ENV_KEYS, (os.path.join(root, "pipe"), os.path.join(root, "log"))))
    for path in env.values():
        os.makedirs(path, exist_ok=True)
    failure = start_daemon(env)
    print(f"failed: {failure}" if failure else "ready", flush=True)
    if not failure:
        sys.stdin.read()
    left = stop_daemon(env)  # also after a failed start: the daemon may be up without its socket
    if left is None:
        shutil.rmtree(root, ignore_errors=True)  # never under a daemon that still runs
    if not failure:
        print(left or "stopped the run's daemon", flush=True)
    return 0 if failure is None and left is None else 1


if __name__ == "__main__":
    if sys.argv[1:2] != ["guard"] or len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} guard DIRECTORY (the launcher starts it)")
    sys.exit(guard(sys.argv[2]))
