"""A run's supervision: its processes, what they report, when it stops, and its final save.

ProcessGroup starts the test process and the workers, restarts one that dies and shuts them all down.
RunMonitor follows the test games and the counters: the progress reports, logged and written as data
(<env>_progress.jsonl, one JSON object a line), and the stop criteria. Supervisor.run ties them to the
signals, the other hosts of a multi-host run and the final save.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.multiprocessing as mp

from checkpoint import final_path, save_run
from environment import TOOLKIT_DIR
from metrics import reaches
from run_state import RunShared
from train import EXIT_NAN, train_worker
from utils import format_duration

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
CHILD_IGNORED = (signal.SIGINT, signal.SIGHUP)
EXIT_FAILED = 1

Stop = tuple[str, int]  # why a run stops, and the exit code that goes with it


@contextmanager
def children_ignore_interrupts():
    """Start children with SIGINT and SIGHUP ignored (an ignored signal stays ignored across exec, and
    Python keeps it so): a Ctrl-C during their start-up reaches only the launcher, which stops them."""
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in CHILD_IGNORED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def stop_signals():
    """While the block runs, Ctrl-C, SIGTERM and SIGHUP are recorded (yields the list of their names) for the
    Supervisor to stop on, instead of interrupting; the previous handlers return after. Only the main thread
    can take signals: run from another thread, a run stops on its criteria alone."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {
        signum: signal.signal(signum, lambda signum, _frame: received.append(signal.Signals(signum).name))
        for signum in STOP_SIGNALS
    }
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass
class GpuRestart:
    """The processes of one GPU under CUDA MPS, going down together after one of them died, to start again
    together `delay` seconds after the last has exited."""

    names: list[str]
    stop_at: float  # time.monotonic() when those still running are killed
    delay: float
    start_at: float | None = None  # set once all have exited


def run_test_process(run: RunShared, incarnation: int) -> None:
    """The test process's entry: test.py's test_process. Where the toolkit's folder comes after the standard
    library on sys.path (a notebook that appends it), `import test` finds Python's own test package, so
    test.py is then loaded from its file, under another name."""
    module = sys.modules.get("test") or importlib.import_module("test")
    if os.path.dirname(os.path.abspath(module.__file__ or "")) != TOOLKIT_DIR:
        spec = importlib.util.spec_from_file_location("a3c_test_process", os.path.join(TOOLKIT_DIR, "test.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    module.test_process(run, incarnation)


class ProcessGroup:
    """This host's processes by name ("test" on host 0, "train<rank>"), each restarted up to --max-restarts.

    Under CUDA MPS (`mps`), a fault of one client reaches every client on its GPU, and the MPS server takes no
    new client there until all of them have exited; restarted at once, one by one, they would fail again and
    use up --max-restarts. So a GPU process that dies takes its GPU's other processes down (they get
    SIBLING_GRACE seconds to exit by themselves), and they start again together after a backoff, counted against
    --max-restarts as one restart of that GPU (group_restarts["cuda:N"]); `restarts` still counts each process's
    own starts. CPU processes, and runs without MPS, restart one by one at once.
    """

    SIBLING_GRACE = 10.0
    BACKOFF = 2.0  # seconds before a GPU's first group restart, doubling with each further one
    BACKOFF_CAP = 30.0

    def __init__(self, run: RunShared, logger, mps: bool = False):
        self.run, self.cfg, self.logger = run, run.cfg, logger
        self.ctx = mp.get_context("spawn")
        self.processes: dict[str, mp.Process] = {}
        self.restarts: dict[str, int] = {}
        self.mps = mps  # whether the GPU processes are MPS clients (mps.gpu_sharing's answer)
        self.group_restarts: dict[str, int] = {}  # by device, under MPS
        self.pending: dict[str, GpuRestart] = {}  # by device, while one is under way

    def names(self) -> list[str]:
        return ["test"] * (self.cfg.host == 0) + [f"train{rank}" for rank in range(self.cfg.workers)]

    def start(self, name: str) -> None:
        """Start process `name`, sharing the model, optimizer, counters, flags and results."""
        incarnation = self.restarts.get(name, 0)  # a restarted process takes new seeds (Config.seed_for)
        if name == "test":
            target, args = run_test_process, (self.run, incarnation)
        else:
            target, args = train_worker, (int(name.removeprefix("train")), self.run, incarnation)
        process = self.ctx.Process(target=target, args=args, name=name, daemon=True)
        with children_ignore_interrupts():
            process.start()
        self.processes[name] = process

    def restart_dead(self) -> Stop | None:
        """Restart each process that died; the reason to stop the run where one must not be restarted."""
        for name, process in list(self.processes.items()):
            if process.is_alive():
                continue
            code = process.exitcode
            if code == EXIT_NAN:
                return f"{name} saw {self.cfg.max_nan_updates} non-finite updates in a row", EXIT_FAILED
            if self.in_gpu_restart(name):
                continue
            why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            on_mps = self.mps and self.device_of(name).type == "cuda"
            stop = self.take_gpu_down(name, why) if on_mps else self.restart_one(name, why)
            if stop is not None:
                return stop
        self.advance_gpu_restarts()
        return None

    def restart_one(self, name: str, why: str) -> Stop | None:
        self.restarts[name] = self.restarts.get(name, 0) + 1
        if self.restarts[name] > self.cfg.max_restarts:
            return f"{name} died ({why}) more than --max-restarts {self.cfg.max_restarts} times", EXIT_FAILED
        self.logger.warning("%s died (%s); restart %d of %d", name, why, self.restarts[name], self.cfg.max_restarts)
        self.start(name)
        return None

    def device_of(self, name: str) -> torch.device:
        """The device process `name` plays on: a worker's own; the test process plays on worker 0's."""
        return self.cfg.device_for(0 if name == "test" else int(name.removeprefix("train")))

    def in_gpu_restart(self, name: str) -> bool:
        return any(name in restart.names for restart in self.pending.values())

    def take_gpu_down(self, name: str, why: str) -> Stop | None:
        """`name`, an MPS client, died: one restart of its GPU, whose processes go down to start again together."""
        device = str(self.device_of(name))
        count = self.group_restarts[device] = self.group_restarts.get(device, 0) + 1
        limit = self.cfg.max_restarts
        if count > limit:
            why = f"{name} died ({why}); {device}'s processes restarted more than --max-restarts {limit} times"
            return why, EXIT_FAILED
        names = [other for other in self.processes if str(self.device_of(other)) == device]
        delay = min(self.BACKOFF * 2 ** (count - 1), self.BACKOFF_CAP)
        self.pending[device] = GpuRestart(names, time.monotonic() + self.SIBLING_GRACE, delay)
        self.logger.warning(
            "%s died (%s) on %s under CUDA MPS, which fails its other clients too: %s start again together %g s "
            "after all have exited (those running in %g s are killed); restart %d of %d",
            *(name, why, device, ", ".join(names), delay, self.SIBLING_GRACE, count, limit),
        )
        return None

    def advance_gpu_restarts(self) -> None:
        """Kill what still runs of a GPU going down once its grace is over; start its processes once it is down
        and the backoff has passed."""
        now = time.monotonic()
        for device, restart in list(self.pending.items()):
            running = [self.processes[name] for name in restart.names if self.processes[name].is_alive()]
            if running and now >= restart.stop_at:
                for process in running:
                    process.kill()
            if running:
                continue
            if restart.start_at is None:
                restart.start_at = now + restart.delay
            if now >= restart.start_at:
                del self.pending[device]
                for name in restart.names:
                    self.restarts[name] = self.restarts.get(name, 0) + 1
                    self.start(name)

    def shutdown(self, while_waiting: Callable[[], None], grace: float = 10.0) -> None:
        """Ask every process to stop, wait `grace` seconds (calling `while_waiting`), then terminate and kill."""
        self.run.stop.set()
        deadline = time.time() + grace
        for process in self.processes.values():
            while process.is_alive() and time.time() < deadline:
                process.join(0.2)
                while_waiting()
        for process in self.processes.values():
            if process.is_alive():
                self.logger.warning("%s did not stop in %.0f s; terminating it", process.name, grace)
                process.terminate()
                process.join(3)
            if process.is_alive():
                process.kill()
                process.join()


class RunMonitor:
    """The run as its numbers tell it: the last --target-window test games, progress reports, stop criteria."""

    def __init__(self, run: RunShared, logger, peers=None):
        self.run, self.cfg, self.logger, self.peers = run, run.cfg, logger, peers
        self.started = time.time()
        self.results_seen = 0
        self.test_rewards: deque[float] = deque(maxlen=run.cfg.target_window)
        self.last_test: float | None = None
        self.last_report = (self.started, run.counters.frames)
        self.path = run.cfg.log_path("_progress.jsonl")

    def drain_results(self) -> None:
        new, self.results_seen = self.run.results.since(self.results_seen)
        for reward, _length in new:
            self.last_test = reward
            self.test_rewards.append(reward)

    def limit_reached(self) -> Stop | None:
        cfg, frames = self.cfg, self.run.counters.frames
        if cfg.max_steps and frames >= cfg.max_steps:
            return f"reached --max-steps {cfg.max_steps:,} frames", 0
        if cfg.max_time and self.run.clock.elapsed() >= cfg.max_time:
            return f"reached --max-time {cfg.max_time:g} s", 0
        if cfg.target_score is not None and reaches(list(self.test_rewards), cfg.target_score, cfg.target_window):
            return f"test mean of {cfg.target_window} games reached --target-score {cfg.target_score:g}", 0
        return None

    def progress(self) -> dict:
        """The numbers of a progress report: counters, frames/s since the last report, test games, hosts."""
        now, counters = time.time(), self.run.counters
        since, frames_then = self.last_report
        self.last_report = (now, counters.frames)
        report = {
            "time": now,
            "elapsed": self.run.clock.elapsed(),
            "frames": counters.frames,
            "frames_per_s": (counters.frames - frames_then) / max(now - since, 1e-9),
            "updates": counters.updates,
            "dropped": counters.dropped,
            "test_last": self.last_test,
            "test_best": self.run.results.best,
            "test_mean": sum(self.test_rewards) / len(self.test_rewards) if self.test_rewards else None,
            "test_window": len(self.test_rewards),
        }
        if self.peers is not None:
            sync, weights = self.peers.last_sync
            report |= {"hosts": self.cfg.hosts, "host_frames": sum(counters.worker_frames()), "sync": sync}
            report["weights"] = weights
        return report

    def report_if_due(self) -> None:
        if time.time() - self.last_report[0] >= self.cfg.progress_interval:
            self.report(self.progress())

    def report(self, numbers: dict) -> None:
        """Log the progress line and append its numbers to the progress file (what benchmarks read)."""
        self.logger.info("%s", self.progress_line(numbers))
        self.write(numbers)

    def progress_line(self, p: dict) -> str:
        test = "no test game yet" if self.cfg.host == 0 else "test games on host 0"
        if p["test_last"] is not None:
            test = f"test last {p['test_last']:g} best {p['test_best']:g} mean({p['test_window']}) {p['test_mean']:.2f}"
        line = f"frames {p['frames']:,} | {p['frames_per_s']:,.0f} frames/s | updates {p['updates']:,} | {test}"
        if p["dropped"]:
            line += f" | dropped updates {p['dropped']}"
        if "hosts" in p:
            hosts = f"{p['hosts']} hosts (this host {p['host_frames']:,} frames)"
            line += f" | {hosts}, sync {p['sync']} weights {p['weights']}"
        return line

    def write(self, record: dict) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            self.logger.warning("could not write %s (%s)", self.path, e)


class Supervisor:
    """Runs this host's part of a run: starts its processes, watches them, stops it on a criterion, a signal,
    a failure or another host's stop, and saves at the end (host 0)."""

    def __init__(self, run: RunShared, logger, signals: list[str], peers=None, mps: bool = False):
        self.run_shared, self.cfg, self.logger = run, run.cfg, logger
        self.signals = signals  # names of the stop signals received, appended by stop_signals()
        self.peers = peers  # a distributed.HostSync in a multi-host run, else None
        self.group = ProcessGroup(run, logger, mps)  # mps: whether the GPU processes are CUDA MPS clients
        self.monitor = RunMonitor(run, logger, peers)
        self.stop_reason: str | None = None
        self.exit_code = 0
        self.final_synced = False

    def run(self) -> int:
        """Run until a stop criterion, a signal or a failure; shut down, save; return the exit code."""
        if self.peers is not None:
            self.peers.start()
        for name in self.group.names():
            self.stop_on(self.signalled())
            if self.stop_reason is None:
                self.group.start(name)
        while self.stop_reason is None:
            self.run_shared.stop.wait(0.25)
            self.monitor.drain_results()
            self.stop_on(self.signalled() or self.peers_stopped() or self.group.restart_dead())
            self.monitor.report_if_due()
            self.stop_on(self.monitor.limit_reached())
        self.logger.info("stopping: %s", self.stop_reason)
        self.group.shutdown(while_waiting=self.monitor.drain_results)
        self.monitor.drain_results()
        self.final_sync()
        if self.cfg.host == 0:
            self.save_final()
        self.log_totals()
        return self.exit_code

    @property
    def best_score(self) -> float | None:
        return self.run_shared.results.best

    def stop_on(self, stop: Stop | None) -> None:
        """Stop the run for the first reason given (later ones change nothing), and tell the other hosts."""
        if stop is None or self.stop_reason is not None:
            return
        self.stop_reason, self.exit_code = stop
        if self.peers is not None:
            self.peers.request_stop(failed=self.exit_code != 0, interrupted=bool(self.signals))

    def signalled(self) -> Stop | None:
        return (f"{self.signals[0]} received", 0) if self.signals else None

    def peers_stopped(self) -> Stop | None:
        """In a multi-host run: another host stopped the run, or the link to the others broke."""
        if self.peers is None:
            return None
        if self.peers.error is not None:
            return f"lost the other hosts ({self.peers.error})", EXIT_FAILED
        if (stopped := self.peers.stopped_by()) is not None:
            host, why, failed = stopped
            return f"host {host} {why}", EXIT_FAILED if failed else 0
        return None

    def final_sync(self) -> None:
        """Workers down: the last weight sync, so every host ends with the same weights (host 0 saves them)."""
        if self.peers is None or self.peers.error is not None:
            return
        failure = self.peers.finish(self.cfg.sync_timeout + 5)
        self.final_synced = failure is None
        if failure is None:
            self.logger.info("final sync %d: weights %s", *self.peers.last_sync)
        else:
            self.logger.warning("final sync failed (%s); this host's own weights are kept", failure)

    def save_final(self) -> None:
        run = self.run_shared
        if not all(torch.isfinite(p).all() for p in run.model.parameters()):
            self.logger.error("shared weights are not finite; keeping the last saved checkpoint")
            self.exit_code = EXIT_FAILED
            return
        path = final_path(self.cfg)
        if not save_run(path, run, run.model, self.best_score, self.logger):
            self.exit_code = EXIT_FAILED
            return
        self.logger.info("saved %s", path)

    def log_totals(self) -> None:
        counters, seconds = self.run_shared.counters, time.time() - self.monitor.started
        own = sum(counters.worker_frames())
        host = f" (this host {own:,})" if self.peers is not None else ""
        self.logger.info("trained %s frames in %s%s", f"{counters.frames:,}", format_duration(seconds), host)
        record = {"event": "stopped", "reason": self.stop_reason, "exit_code": self.exit_code, "seconds": seconds}
        record |= {"frames": counters.frames, "updates": counters.updates, "host_frames": own}
        if self.peers is not None:
            record |= {"final_sync": self.final_synced, "sync": self.peers.last_sync[0]}
            record["weights"] = self.peers.last_sync[1]
        self.monitor.write(record)
