"""CUDA MPS for A3G runs: several workers on one GPU run at once only under NVIDIA's MPS daemon.

Each worker is a process with its own CUDA context, and without MPS the GPU runs one context at a time, so
A3G workers sharing a GPU are slower than as many CPU workers (docs/benchmarks.md has the figures). So when
two or more of a run's processes share a GPU, `--mps auto` uses a running daemon, or starts one of its own
in private pipe and log directories for the length of the run; where that cannot be done it says so in one
line and trains without. `--mps on` makes that an error before any
worker starts; `--mps off` keeps the workers off any daemon.

MPS clients must not narrow the GPUs again (NVIDIA: CUDA_VISIBLE_DEVICES "should not be set in the client's
environment"; the server renumbers the GPUs its daemon sees, in the order given). So a daemon of our own takes the
launcher's CUDA_VISIBLE_DEVICES, as GPU UUIDs, and the workers start without it: their cuda:N is the launcher's.

A daemon of our own is owned by a guard process (`python mps.py guard`): it starts the daemon, and stops
it once the launcher closes its stdin, which also happens when the launcher is killed, so that no daemon
outlives its run.
"""

from __future__ import annotations

import errno
import os
import re
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

CONTROL = "nvidia-cuda-mps-control"
DEFAULT_PIPE_DIR = "/tmp/nvidia-mps"  # where the CUDA driver looks without CUDA_MPS_PIPE_DIRECTORY
ENV_KEYS = ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")
VISIBLE = "CUDA_VISIBLE_DEVICES"
ROOT_UID = 0  # NVIDIA's multi-user setup: root's daemon starts a server for whichever user connects
START_TIMEOUT = 15.0
STOP_TIMEOUT = 60.0
CLIENT_TIMEOUT = 5.0
NOBODY_THERE = (errno.ENOENT, errno.ECONNREFUSED)  # a connect error that says no daemon listens
COST = "they take turns on it instead of running at once (README: A3G and MPS)"
START_IT = f"start it with `{CONTROL} -d` as a user allowed to (root or the GPU's owner)"


def shared_gpus(gpu_ids: tuple[int, ...], workers: int, test: bool = True) -> dict[int, int]:
    """The GPUs that two or more of the run's processes share, with their process counts: the workers go
    round `gpu_ids`, and the test process, where one runs (`test`: host 0 of a run), plays on the first."""
    if gpu_ids == (-1,):
        return {}
    counts = Counter(gpu_ids[rank % len(gpu_ids)] for rank in range(workers))
    if test:
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
    compute_modes: dict[int, str]  # Default, Exclusive_Process, ... by the run's CUDA ordinal, where known
    visible: str | None  # the launcher's CUDA_VISIBLE_DEVICES, None where unset
    daemon_visible: str | None  # the CUDA_VISIBLE_DEVICES a daemon of ours takes (see visible_for_daemon)


@dataclass(frozen=True)
class Gpu:
    """One GPU as nvidia-smi lists it (nvidia-smi ignores CUDA_VISIBLE_DEVICES)."""

    uuid: str  # GPU-...
    bus_id: str  # PCI domain:bus:device.function, in hex
    compute_mode: str


def daemon_owner(pipe_dir: str) -> int | None:
    """The uid of the daemon whose control socket is in `pipe_dir` and answers, else None."""
    path = os.path.join(pipe_dir, "control")
    error = connect_error(path)
    if error is not None and (error.errno in NOBODY_THERE or not client_answers(pipe_dir)):
        return None
    try:
        return os.stat(path).st_uid
    except OSError:
        return None  # it quit meanwhile


def connect_error(path: str) -> OSError | None:
    """None where the control socket at `path` takes a connection, else the error. NVIDIA does not document
    the socket's type: one the kernel refuses as the wrong type is tried as the next. Non-blocking, so that a
    wedged daemon's full backlog fails at once instead of hanging the run."""
    error = None
    for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_UNIX, kind) as client:
            client.setblocking(False)
            try:
                client.connect(path)
            except OSError as e:
                error = e
                if e.errno != errno.EPROTOTYPE:
                    break
            else:
                return None
    return error


def describe_error(error: OSError | None) -> str:
    return "it answers" if error is None else f"connect: {error.strerror or error}"


def client_answers(pipe_dir: str) -> bool:
    """Whether NVIDIA's own client gets an answer (`get_server_list`) from the daemon whose control socket is in
    `pipe_dir`, where our connect failed for a reason other than nobody listening: the documented interface
    has the last word."""
    try:
        done = run_control([], {ENV_KEYS[0]: pipe_dir}, stdin="get_server_list\n", timeout=CLIENT_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and "Cannot find MPS control daemon" not in done.stdout + done.stderr


def smi_gpus() -> list[Gpu]:
    """The machine's GPUs as nvidia-smi lists them; empty where nvidia-smi is missing or fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=uuid,pci.bus_id,compute_mode", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[field.strip() for field in line.split(",")] for line in out.splitlines()]
    return [Gpu(*row) for row in rows if len(row) == 3 and row[0].startswith("GPU-") and bus_key(row[1])]


def bus_key(bus_id: str) -> tuple[int, ...]:
    """A PCI bus id as numbers to sort by; () where it is not one."""
    try:
        return tuple(int(part, 16) for part in re.split(r"[:.]", bus_id))
    except ValueError:
        return ()


def cuda_candidates(gpus: list[Gpu], visible: str | None, pci_order: bool) -> list[list[Gpu]]:
    """For each CUDA ordinal of this process, the GPUs it may be: one where that is known, all where not, none
    where its CUDA_VISIBLE_DEVICES entry names no GPU we know (a MIG instance, a typo: CUDA stops there).

    A UUID entry (full, or a prefix with GPU-, unique) names its GPU. An index counts in CUDA's order, which is
    nvidia-smi's PCI bus order only with CUDA_DEVICE_ORDER=PCI_BUS_ID; CUDA's default puts the fastest GPU
    first and leaves the rest unspecified, so there an index on a machine of several GPUs may be any of them."""
    order = sorted(gpus, key=lambda gpu: bus_key(gpu.bus_id))
    known = pci_order or len(order) == 1
    entries = [e.strip() for e in visible.split(",")] if visible is not None else [str(i) for i in range(len(order))]
    candidates = []
    for entry in entries:
        if entry.startswith("GPU-"):
            named = [gpu for gpu in order if gpu.uuid.startswith(entry)]
            candidates.append(named if len(named) == 1 else [])
        elif entry.isdigit() and int(entry) < len(order):
            candidates.append([order[int(entry)]] if known else order)
        else:
            candidates.append([])
    return candidates


def known_modes(candidates: list[list[Gpu]]) -> dict[int, str]:
    """The compute mode of each CUDA ordinal whose candidate GPUs all have the same one (often every GPU does)."""
    modes = {}
    for ordinal, gpus in enumerate(candidates):
        found = {gpu.compute_mode for gpu in gpus}
        if len(found) == 1:
            modes[ordinal] = found.pop()
    return modes


def visible_for_daemon(candidates: list[list[Gpu]], visible: str | None) -> str | None:
    """The launcher's CUDA_VISIBLE_DEVICES as UUIDs, which NVIDIA recommends for MPS; as it is where an entry
    names no single GPU (the daemon inherits CUDA_DEVICE_ORDER, so it reads the indices as the launcher did).
    None where it is unset: the daemon then sees what the launcher sees."""
    if visible is None or any(len(gpus) != 1 for gpus in candidates):
        return visible
    return ",".join(gpus[0].uuid for gpus in candidates)


def probe() -> Machine:
    pipe_dir = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", DEFAULT_PIPE_DIR)
    visible = os.environ.get(VISIBLE)
    candidates = cuda_candidates(smi_gpus(), visible, os.environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID")
    daemon_visible = visible_for_daemon(candidates, visible)
    owner = daemon_owner(pipe_dir)
    return Machine(
        shutil.which(CONTROL), pipe_dir, owner, os.getuid(), known_modes(candidates), visible, daemon_visible
    )


@dataclass(frozen=True)
class Plan:
    action: str  # "use" a running daemon, "start" one, or "hide" any daemon and train without
    line: str  # what the log says
    warning: bool = False


def plan(mode: str, shared: dict[int, int], machine: Machine) -> Plan:
    """What to do for workers sharing GPUs (`shared`, not empty), in `mode`; a UsageError where the run
    cannot work: --mps on without MPS, or a GPU in exclusive-process mode (one process only, without MPS).
    A running daemon of ours or root's is used, unless CUDA_VISIBLE_DEVICES narrows the GPUs: which GPUs that
    daemon serves, and so what the workers' cuda:N would be, is unknown, so the run starts its own."""
    workers = describe(shared)
    exclusive = exclusive_gpus(shared, machine)
    if mode == "off":
        if exclusive:
            raise UsageError(exclusive_error(exclusive, "--mps off keeps the workers off MPS"))
        return Plan("hide", f"--mps off: {workers} without CUDA MPS: {COST}")
    running = machine.daemon_uid
    usable = running in (machine.uid, ROOT_UID)
    if usable and machine.visible is None:
        return Plan("use", f"CUDA MPS: using the running daemon in {machine.pipe_dir} for {workers}")
    if running is not None and not usable:
        reason = f"another user's CUDA MPS daemon (uid {running}) runs in {machine.pipe_dir}"
        return cannot(mode, shared, exclusive, reason, "ask its owner to stop it (`echo quit | " + CONTROL + "`)")
    if machine.control is None:
        reason = f"{CONTROL} is not installed"
        return cannot(mode, shared, exclusive, reason, "install the NVIDIA driver's CUDA MPS tools")
    if running is not None:
        return Plan(
            "start",
            f"CUDA MPS: not using the running daemon in {machine.pipe_dir}, which may serve other GPUs than "
            f"{VISIBLE}={machine.visible} selects: started one of the run's own for {workers}",
        )
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

    def __init__(self, visible: str | None):
        """`visible`: the daemon's CUDA_VISIBLE_DEVICES, None to leave it unset."""
        self.root = tempfile.mkdtemp(prefix="a3c-mps-")
        self.pipe_dir, self.log_dir = (os.path.join(self.root, name) for name in ("pipe", "log"))
        self.guard = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "guard", self.root],
            env=None if visible is None else {**os.environ, VISIBLE: visible},
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
def environment(values: dict[str, str | None]):
    """os.environ with `values` set, or removed where None (as the workers started meanwhile inherit it),
    restored afterwards."""
    before = {key: os.environ.get(key) for key in values}
    set_environment(values)
    try:
        yield
    finally:
        set_environment(before)


def set_environment(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextmanager
def gpu_sharing(mode: str, shared: dict[int, int], log):
    """The run's MPS, for the length of the `with` block, which gets whether the run's GPU processes are MPS
    clients: `log(line, warning)` says which case happened. Raises UsageError before anything starts where
    the run cannot go on (see plan)."""
    if not shared:
        if mode == "on":
            log("--mps on: no two processes share a GPU, so the run needs no CUDA MPS", False)
        yield False
        return
    machine = probe()
    decision = plan(mode, shared, machine)
    daemon = None
    if decision.action == "start":
        try:
            daemon = Daemon(machine.daemon_visible)
        except MpsError as e:
            exclusive = exclusive_gpus(shared, machine)
            decision = cannot(mode, shared, exclusive, f"its daemon did not start ({e})", START_IT)
        else:
            decision = Plan("start", started_line(decision.line, daemon, machine.daemon_visible))
    log(decision.line, decision.warning)
    values: dict[str, str | None] = {**daemon.env(), VISIBLE: None} if daemon else {}
    if decision.action == "hide":
        values = {ENV_KEYS[0]: tempfile.mkdtemp(prefix="a3c-no-mps-")}  # no daemon there: the workers run without
    try:
        with environment(values):
            yield decision.action != "hide"
    finally:
        if daemon is not None:
            log(f"CUDA MPS: {daemon.stop()}", False)
        elif decision.action == "hide":
            shutil.rmtree(values[ENV_KEYS[0]], ignore_errors=True)


def started_line(line: str, daemon: Daemon, visible: str | None) -> str:
    gpus = f"; its GPUs {VISIBLE}={visible}, unset for its clients, the workers" if visible is not None else ""
    return f"{line} (pipe and log in {daemon.root}{gpus}); it stops when the run ends"


# ---------------------------------------------------------------- the guard process


def run_control(
    args: list[str], env: dict[str, str], stdin: str | None = None, timeout: float = STOP_TIMEOUT
) -> subprocess.CompletedProcess:
    control = shutil.which(CONTROL)
    if control is None:
        raise OSError(f"{CONTROL} is not installed")
    return subprocess.run(
        [control, *args], input=stdin, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
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
    control = os.path.join(pipe_dir, "control")
    why = describe_error(connect_error(control))
    return f"its control socket {control} did not answer within {START_TIMEOUT:g} s ({why}){log_tail(log_dir)}"


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
