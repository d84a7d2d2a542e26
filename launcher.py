"""A training run: set it up (checks, shared model and optimizer, resume), then supervise its processes.

Run setup builds what the processes share (`shared.RunShared`); the Supervisor starts the test process
and the workers, restarts what dies, reports progress, applies the stop criteria and signals, shuts
everything down and writes the final checkpoint.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from collections import deque
from contextlib import contextmanager

import torch
import torch.multiprocessing as mp

from checkpoint import Checkpoint, check_fits, load_checkpoint, save_run
from environment import describe_env
from metrics import reaches
from model import A3Clstm
from settings import Config
from shared import Counters, GameResults, RunClock, RunShared, StopFlag
from shared_optim import make_optimizer
from tester import test_process
from train import EXIT_NAN, train_worker
from utils import UsageError, format_duration

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
CHILD_IGNORED = (signal.SIGINT, signal.SIGHUP)
EXIT_FAILED = 1


# ---------------------------------------------------------------- run setup


def check_writable(directory: str, flag: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise UsageError(
            f"{flag} {directory} is not writable ({e.strerror}): choose a directory you can write"
        ) from None


def prepare(cfg: Config) -> int:
    """Everything that can fail on bad input, done before any process starts; returns the env's action count."""
    check_writable(cfg.save_model_dir, "--save-model-dir")
    check_writable(cfg.log_dir, "--log-dir")
    num_actions = describe_env(cfg.env, cfg.env_config)
    if cfg.tensorboard_logger:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UsageError("--tensorboard-logger needs the tensorboard package: pip install tensorboard") from None
    return num_actions


def load_resume(cfg: Config, num_actions: int, required: bool = True) -> Checkpoint | None:
    """The checkpoint to resume (see resume_path), checked against the env; a missing one is an error if
    `required`, else None (a host of a multi-host run resumes from whichever host has one)."""
    path = resume_path(cfg)
    if not required and not os.path.exists(path):
        return None
    ckpt = load_checkpoint(path)
    check_fits(ckpt, path, num_actions, cfg.hidden_size, cfg.env)
    return ckpt


def under_torchrun() -> bool:
    """Whether torchrun (or another env:// launcher of torch.distributed) started this process: a multi-host run."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def resume_path(cfg: Config) -> str:
    """The newer of <env>.dat and <env>_last.dat (--save-max writes the final state to the latter)."""
    paths = [cfg.checkpoint_path(cfg.load_model_dir, suffix) for suffix in ("", "_last")]
    existing = [p for p in paths if os.path.exists(p)]
    return max(existing, key=os.path.getmtime) if existing else paths[0]


def keep_previous_run(cfg: Config) -> list[str]:
    """A fresh run never overwrites an earlier run: move its checkpoints (host 0 keeps them) and this host's
    log, metrics and curve aside, stamped with the time of the earlier run. Returns the paths kept."""
    checkpoints = [cfg.checkpoint_path(suffix=suffix) for suffix in ("", "_last")] if cfg.host == 0 else []
    logs = [cfg.log_path(suffix) for suffix in ("_log", "_metrics.csv", ".png")]
    earlier = [p for p in checkpoints + logs if os.path.exists(p)]
    if not earlier:
        return []
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(max(map(os.path.getmtime, earlier))))
    kept = [f"{p.removesuffix('.dat')}.{stamp}.dat" if p in checkpoints else f"{p}.{stamp}" for p in earlier]
    for path, aside in zip(earlier, kept):
        os.replace(path, aside)
    return kept


def build_run(cfg: Config, num_actions: int, ckpt: Checkpoint | None, logger) -> RunShared:
    """The shared model (resumed from `ckpt` if given), the shared optimizer, counters and flags."""
    model = A3Clstm(1, num_actions, cfg.hidden_size)
    optimizer = None
    if cfg.shared_optimizer:
        optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.amsgrad)
    if ckpt is not None:
        restore(cfg, model, optimizer, ckpt, logger)
    model.share_memory()
    counters = Counters(cfg.workers, ckpt.frames if ckpt else 0, ckpt.updates if ckpt else 0)
    clock = RunClock(ckpt.elapsed if ckpt else 0.0, time.time())
    return RunShared(cfg, model, optimizer, counters, StopFlag(), GameResults(), os.getpid(), clock)


def restore(cfg: Config, model: A3Clstm, optimizer, ckpt: Checkpoint, logger) -> None:
    """Load a checkpoint's weights, and its optimizer statistics where the optimizer is the same."""
    model.load_state_dict(ckpt.model)
    saved = ckpt.args
    same_optimizer = saved.get("optimizer") == cfg.optimizer and saved.get("amsgrad") == cfg.amsgrad
    if optimizer is not None and ckpt.optimizer and same_optimizer:
        optimizer.load_state_dict(ckpt.optimizer)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr
        optimizer.share_memory()
        restored = "weights, optimizer statistics"
    else:
        restored = "weights only"
    logger.info("resumed from %s frames, %s updates (%s)", f"{ckpt.frames:,}", f"{ckpt.updates:,}", restored)


# ---------------------------------------------------------------- supervision


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


class Supervisor:
    """Starts the test process and the workers of a run, watches, restarts and stops them, and saves at the end."""

    def __init__(self, run: RunShared, logger, best_score: float | None, signals: list[str], peers=None):
        self.run_shared = run
        self.peers = peers  # a distributed.HostSync in a multi-host run, else None
        self.cfg = run.cfg
        self.logger = logger
        self.ctx = mp.get_context("spawn")
        self.best_score = best_score
        self.results_seen = 0
        self.processes: dict[str, mp.Process] = {}
        self.restarts: dict[str, int] = {}
        self.signals = signals  # names of the stop signals received, appended by stop_signals()
        self.stop_reason: str | None = None
        self.exit_code = 0
        self.test_rewards: deque[float] = deque(maxlen=run.cfg.target_window)
        self.last_test: float | None = None

    def start(self, name: str) -> None:
        """Start process `name` ("test" or "train<rank>"), sharing the model, optimizer, counters and flags."""
        if name == "test":
            target, args = test_process, (self.run_shared, self.best_score)
        else:
            target, args = train_worker, (int(name.removeprefix("train")), self.run_shared)
        process = self.ctx.Process(target=target, args=args, name=name, daemon=True)
        with children_ignore_interrupts():
            process.start()
        self.processes[name] = process

    def request_stop(self, reason: str, exit_code: int = 0) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.exit_code = exit_code
            if self.peers is not None:
                self.peers.request_stop(failed=exit_code != 0, interrupted=bool(self.signals))

    def check_peers(self) -> None:
        """In a multi-host run: stop when another host stopped the run, or when the link to the others broke."""
        if self.peers is None:
            return
        if self.peers.error is not None:
            self.request_stop(f"lost the other hosts ({self.peers.error})", EXIT_FAILED)
        elif (stopped := self.peers.stopped_by()) is not None:
            host, why, failed = stopped
            self.request_stop(f"host {host} {why}", EXIT_FAILED if failed else 0)

    def check_signals(self) -> None:
        if self.signals:
            self.request_stop(f"{self.signals[0]} received")

    def run(self) -> int:
        """Run until a stop criterion, a signal or a failure; shut down, save; return the exit code."""
        cfg, counters = self.cfg, self.run_shared.counters
        start = time.time()
        names = ["test"] * (cfg.host == 0) + [f"train{rank}" for rank in range(cfg.workers)]
        if self.peers is not None:
            self.peers.start()
        for name in names:
            self.check_signals()
            if self.stop_reason is None:
                self.start(name)
        last_report, last_frames = start, counters.frames
        while self.stop_reason is None:
            self.run_shared.stop.wait(0.25)
            self.check_signals()
            self.check_peers()
            self.drain_results()
            self.supervise()
            now = time.time()
            if now - last_report >= cfg.progress_interval:
                self.report(now - last_report, last_frames)
                last_report, last_frames = now, counters.frames
            self.check_limits(now - start)
        self.logger.info("stopping: %s", self.stop_reason)
        self.shutdown()
        self.final_sync()
        if cfg.host == 0:
            self.save_final()
        own = f" (this host {sum(counters.worker_frames()):,})" if self.peers is not None else ""
        self.logger.info("trained %s frames in %s%s", f"{counters.frames:,}", format_duration(time.time() - start), own)
        return self.exit_code

    def drain_results(self) -> None:
        new, self.results_seen = self.run_shared.results.since(self.results_seen)
        for reward, _length in new:
            self.last_test = reward
            self.best_score = reward if self.best_score is None else max(self.best_score, reward)
            self.test_rewards.append(reward)

    def supervise(self) -> None:
        """Restart a process that died, up to --max-restarts each; past that, stop the run."""
        for name, process in list(self.processes.items()):
            if process.is_alive() or self.stop_reason is not None:
                continue
            code = process.exitcode
            if code == EXIT_NAN:
                self.request_stop(f"{name} saw {self.cfg.max_nan_updates} non-finite updates in a row", EXIT_FAILED)
                return
            why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            self.restarts[name] = self.restarts.get(name, 0) + 1
            if self.restarts[name] > self.cfg.max_restarts:
                self.request_stop(
                    f"{name} died ({why}) more than --max-restarts {self.cfg.max_restarts} times", EXIT_FAILED
                )
                return
            self.logger.warning("%s died (%s); restart %d of %d", name, why, self.restarts[name], self.cfg.max_restarts)
            self.start(name)

    def report(self, interval: float, last_frames: int) -> None:
        frames = self.run_shared.counters.frames
        rate = (frames - last_frames) / interval
        test = "no test game yet" if self.cfg.host == 0 else "test games on host 0"
        if self.last_test is not None:
            mean = sum(self.test_rewards) / len(self.test_rewards)
            test = f"test last {self.last_test:g} best {self.best_score:g} mean({len(self.test_rewards)}) {mean:.2f}"
        dropped = self.run_shared.counters.dropped
        hosts = ""
        if self.peers is not None:
            own = sum(self.run_shared.counters.worker_frames())
            hosts = " | {} hosts (this host {:,} frames), sync {} weights {}".format(
                self.cfg.hosts, own, *self.peers.last_sync
            )
        self.logger.info(
            "frames %s | %s frames/s | updates %s | %s%s%s",
            f"{frames:,}",
            f"{rate:,.0f}",
            f"{self.run_shared.counters.updates:,}",
            test,
            f" | dropped updates {dropped}" if dropped else "",
            hosts,
        )

    def check_limits(self, elapsed: float) -> None:
        cfg = self.cfg
        if cfg.max_steps and self.run_shared.counters.frames >= cfg.max_steps:
            self.request_stop(f"reached --max-steps {cfg.max_steps:,} frames")
        elif cfg.max_time and elapsed >= cfg.max_time:
            self.request_stop(f"reached --max-time {cfg.max_time:g} s")
        elif cfg.target_score is not None and reaches(list(self.test_rewards), cfg.target_score, cfg.target_window):
            self.request_stop(f"test mean of {cfg.target_window} games reached --target-score {cfg.target_score:g}")

    def shutdown(self, grace: float = 10.0) -> None:
        """Ask every process to stop, wait `grace` seconds, then terminate and kill what is left."""
        self.run_shared.stop.set()
        deadline = time.time() + grace
        for process in self.processes.values():
            while process.is_alive() and time.time() < deadline:
                process.join(0.2)
                self.drain_results()
        for process in self.processes.values():
            if process.is_alive():
                self.logger.warning("%s did not stop in %.0f s; terminating it", process.name, grace)
                process.terminate()
                process.join(3)
            if process.is_alive():
                process.kill()
                process.join()
        self.drain_results()

    def final_sync(self) -> None:
        """Workers down: the last weight sync, so every host ends with the same weights (host 0 saves them)."""
        if self.peers is None or self.peers.error is not None:
            return
        failure = self.peers.finish(self.cfg.sync_timeout + 5)
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
        path = self.cfg.checkpoint_path(suffix="_last" if self.cfg.save_max else "")
        if not save_run(path, run, run.model, self.best_score, self.logger):
            self.exit_code = EXIT_FAILED
            return
        self.logger.info("saved %s", path)
