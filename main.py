"""Train an A3C-LSTM (A3G with --gpu-ids) agent: parse the flags, check them, launch and supervise the processes.

python main.py --env PongNoFrameskip-v4 --workers 32 --gpu-ids 0 1 2 3 --amsgrad
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import tempfile
import time
from collections import deque
from contextlib import contextmanager

import torch
import torch.multiprocessing as mp

from environment import describe_env
from model import A3Clstm
from shared_optim import make_optimizer
from test import test_process
from train import EXIT_NAN, train_worker
from utils import (
    Checkpoint,
    Config,
    Counters,
    GameResults,
    StopFlag,
    UsageError,
    check_fits,
    check_gpus,
    format_duration,
    load_checkpoint,
    preprocessing_warning,
    save_run,
    setup_logger,
)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
CHILD_IGNORED = (signal.SIGINT, signal.SIGHUP)
EXIT_FAILED = 1


def str2bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "y"):
        return True
    if text.lower() in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line, like every other input error."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        description="A3C-LSTM / A3G training on Atari (gymnasium + ale-py).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    flag = {"type": str2bool, "nargs": "?", "const": True, "metavar": "BOOL"}
    p.add_argument(
        "--env", default="PongNoFrameskip-v4", help="gymnasium env id (ALE ids, <Game>Deterministic-v4, module:EnvId)"
    )
    p.add_argument("--env-config", default="config.json", help="per-game crop settings (JSON)")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    p.add_argument("--gamma", type=float, default=0.99, help="discount factor for rewards")
    p.add_argument("--tau", type=float, default=1.0, help="GAE lambda")
    p.add_argument("--seed", type=int, default=1, help="random seed; worker i uses seed + i")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="training processes")
    p.add_argument("--num-steps", type=int, default=20, help="rollout length (agent steps per update)")
    p.add_argument(
        "--distributed-step-size",
        type=int,
        nargs="+",
        default=[],
        help="rollout lengths assigned round-robin to workers, e.g. 16 32 64 (overrides --num-steps)",
    )
    p.add_argument("--max-episode-length", type=int, default=10000, help="agent steps before an episode is truncated")
    p.add_argument("--skip-rate", type=int, default=4, help="frames each action repeats on NoFrameskip ids")
    p.add_argument("--hidden-size", type=int, default=512, help="LSTM hidden size")
    p.add_argument("--entropy-coef", type=float, default=0.01, help="entropy bonus coefficient")
    p.add_argument("--value-coef", type=float, default=0.5, help="value loss coefficient")
    p.add_argument("--max-grad-norm", type=float, default=0.0, help="clip gradients to this norm (0: off)")
    p.add_argument("--optimizer", default="Adam", choices=["Adam", "RMSprop"], help="shared optimizer")
    p.add_argument("--amsgrad", default=False, help="use the AMSGrad variant of Adam", **flag)
    p.add_argument("--shared-optimizer", default=True, help="share optimizer statistics between workers", **flag)
    p.add_argument(
        "--load", default=False, help="resume from <load-model-dir>/<env>.dat (or the newer _last.dat)", **flag
    )
    p.add_argument(
        "--save-max",
        default=False,
        help="save <env>.dat only on a new best test score (the final state goes to <env>_last.dat)",
        **flag,
    )
    p.add_argument("--load-model-dir", default="trained_models/", help="where --load looks")
    p.add_argument("--save-model-dir", default="trained_models/", help="where checkpoints are written")
    p.add_argument("--log-dir", default="logs/", help="where logs, metrics and plots are written")
    p.add_argument("--gpu-ids", type=int, nargs="+", default=[-1], help="GPUs for workers, round-robin (-1: CPU)")
    p.add_argument(
        "--envs-per-worker", type=int, default=1, help="environments each worker steps with one batched forward"
    )
    p.add_argument(
        "--textbook",
        default=False,
        help="per-step autograd forward as the classic tool does (the baseline bench.py compares with)",
        **flag,
    )
    p.add_argument("--channels-last", default=True, help="channels-last memory layout for the convolutions", **flag)
    p.add_argument("--bf16", default=False, help="bfloat16 autocast for the convolutions", **flag)
    p.add_argument("--test-interval", type=float, default=5.0, help="seconds the test process waits between games")
    p.add_argument("--progress-interval", type=float, default=10.0, help="seconds between progress lines")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many frames (0: no limit)")
    p.add_argument("--max-time", type=float, default=0.0, help="stop after this many seconds (0: no limit)")
    p.add_argument("--target-score", type=float, default=None, help="stop once the test mean reaches this score")
    p.add_argument("--target-window", type=int, default=10, help="test games averaged for --target-score")
    p.add_argument("--max-restarts", type=int, default=3, help="restarts allowed per process before the run stops")
    p.add_argument("--max-nan-updates", type=int, default=100, help="non-finite updates in a row that stop the run")
    p.add_argument(
        "--tensorboard-logger", default=False, help="write TensorBoard scalars under <log-dir>/tensorboard", **flag
    )
    return p


def parse_config(argv: list[str] | None = None) -> Config:
    args = vars(build_parser().parse_args(argv))
    args["gpu_ids"] = tuple(args["gpu_ids"])
    args["distributed_step_size"] = tuple(args["distributed_step_size"])
    cfg = Config(**args)
    check_values(cfg)
    return cfg


def check_values(cfg: Config) -> None:
    """Flag values that cannot work, each as one UsageError line."""
    positive = {
        "--workers": cfg.workers,
        "--num-steps": cfg.num_steps,
        "--hidden-size": cfg.hidden_size,
        "--skip-rate": cfg.skip_rate,
        "--max-episode-length": cfg.max_episode_length,
        "--envs-per-worker": cfg.envs_per_worker,
        "--target-window": cfg.target_window,
        "--max-nan-updates": cfg.max_nan_updates,
    }
    for name, value in positive.items():
        if value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    if any(s < 1 for s in cfg.distributed_step_size):
        raise UsageError(f"--distributed-step-size values must be at least 1, got {list(cfg.distributed_step_size)}")
    if not cfg.lr > 0 or not math.isfinite(cfg.lr):
        raise UsageError(f"--lr must be a positive number, got {cfg.lr}")
    if not 0 < cfg.gamma <= 1:
        raise UsageError(f"--gamma must lie in (0, 1], got {cfg.gamma}")
    if not 0 <= cfg.tau <= 1:
        raise UsageError(f"--tau must lie in [0, 1], got {cfg.tau}")
    for name, value in {
        "--entropy-coef": cfg.entropy_coef,
        "--value-coef": cfg.value_coef,
        "--max-grad-norm": cfg.max_grad_norm,
        "--test-interval": cfg.test_interval,
        "--max-steps": cfg.max_steps,
        "--max-time": cfg.max_time,
        "--max-restarts": cfg.max_restarts,
    }.items():
        if value < 0:
            raise UsageError(f"{name} must not be negative, got {value}")
    if cfg.progress_interval <= 0:
        raise UsageError(f"--progress-interval must be positive, got {cfg.progress_interval}")
    check_gpus(cfg.gpu_ids)


def check_writable(directory: str, flag: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise UsageError(
            f"{flag} {directory} is not writable ({e.strerror}): choose a directory you can write"
        ) from None


def prepare(cfg: Config) -> tuple[int, Checkpoint | None]:
    """Everything that can fail on bad input, done before any process starts."""
    check_writable(cfg.save_model_dir, "--save-model-dir")
    check_writable(cfg.log_dir, "--log-dir")
    num_actions = describe_env(cfg.env, cfg.env_config)
    if cfg.tensorboard_logger:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UsageError("--tensorboard-logger needs the tensorboard package: pip install tensorboard") from None
    ckpt = None
    if cfg.load:
        path = resume_path(cfg)
        ckpt = load_checkpoint(path)
        check_fits(ckpt, path, num_actions, cfg.hidden_size, cfg.env)
    return num_actions, ckpt


def resume_path(cfg: Config) -> str:
    """The newer of <env>.dat and <env>_last.dat (--save-max writes the final state to the latter)."""
    paths = [cfg.checkpoint_path(cfg.load_model_dir, suffix) for suffix in ("", "_last")]
    existing = [p for p in paths if os.path.exists(p)]
    return max(existing, key=os.path.getmtime) if existing else paths[0]


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


class Launcher:
    """Owns the shared model, optimizer and counters; starts, watches, restarts and stops the processes."""

    def __init__(self, cfg: Config, num_actions: int, ckpt: Checkpoint | None, logger):
        self.cfg = cfg
        self.logger = logger
        self.ctx = mp.get_context("spawn")
        self.model = A3Clstm(1, num_actions, cfg.hidden_size)
        self.optimizer = None
        if cfg.shared_optimizer:
            self.optimizer = make_optimizer(cfg.optimizer, self.model.parameters(), cfg.lr, cfg.amsgrad)
        self.counters = Counters(cfg.workers, ckpt.frames if ckpt else 0, ckpt.updates if ckpt else 0)
        self.best_score = ckpt.best_score if ckpt else None
        if ckpt is not None:
            self.restore(ckpt)
        self.model.share_memory()
        self.stop_event = StopFlag()
        self.results = GameResults()
        self.results_seen = 0
        self.processes: dict[str, mp.Process] = {}
        self.restarts: dict[str, int] = {}
        self.stop_reason: str | None = None
        self.exit_code = 0
        self.test_rewards: deque[float] = deque(maxlen=cfg.target_window)
        self.last_test: float | None = None

    def restore(self, ckpt: Checkpoint) -> None:
        self.model.load_state_dict(ckpt.model)
        saved = ckpt.args
        same_optimizer = saved.get("optimizer") == self.cfg.optimizer and saved.get("amsgrad") == self.cfg.amsgrad
        if self.optimizer is not None and ckpt.optimizer and same_optimizer:
            self.optimizer.load_state_dict(ckpt.optimizer)
            for group in self.optimizer.param_groups:
                group["lr"] = self.cfg.lr
            self.optimizer.share_memory()
            restored = "weights, optimizer statistics"
        else:
            restored = "weights only"
        self.logger.info("resumed from %s frames, %s updates (%s)", f"{ckpt.frames:,}", f"{ckpt.updates:,}", restored)

    def start(self, name: str) -> None:
        """Start process `name` ("test" or "train<rank>"), sharing the model, optimizer, counters and flags."""
        shared = (self.cfg, self.model, self.optimizer, self.counters)
        if name == "test":
            target, args = test_process, (*shared, self.results, self.stop_event, os.getpid(), self.best_score)
        else:
            rank = int(name.removeprefix("train"))
            target, args = train_worker, (rank, *shared, self.stop_event, os.getpid())
        process = self.ctx.Process(target=target, args=args, name=name, daemon=True)
        with children_ignore_interrupts():
            process.start()
        self.processes[name] = process

    def request_stop(self, reason: str, exit_code: int = 0) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.exit_code = exit_code

    def on_signal(self, signum, _frame) -> None:
        self.request_stop(f"{signal.Signals(signum).name} received")

    def run(self) -> int:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.on_signal)
        cfg = self.cfg
        start = time.time()
        names = ["test"] + [f"train{rank}" for rank in range(cfg.workers)]
        for name in names:
            if self.stop_reason is None:
                self.start(name)
        last_report, last_frames = start, self.counters.frames
        while self.stop_reason is None:
            self.stop_event.wait(0.25)
            self.drain_results()
            self.supervise()
            now = time.time()
            if now - last_report >= cfg.progress_interval:
                self.report(now - last_report, last_frames)
                last_report, last_frames = now, self.counters.frames
            self.check_limits(now - start)
        self.logger.info("stopping: %s", self.stop_reason)
        self.shutdown()
        self.save_final()
        self.logger.info("trained %s frames in %s", f"{self.counters.frames:,}", format_duration(time.time() - start))
        return self.exit_code

    def drain_results(self) -> None:
        new, self.results_seen = self.results.since(self.results_seen)
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
        frames = self.counters.frames
        rate = (frames - last_frames) / interval
        test = "no test game yet"
        if self.last_test is not None:
            mean = sum(self.test_rewards) / len(self.test_rewards)
            test = f"test last {self.last_test:g} best {self.best_score:g} mean({len(self.test_rewards)}) {mean:.2f}"
        dropped = self.counters.dropped
        self.logger.info(
            "frames %s | %s frames/s | updates %s | %s%s",
            f"{frames:,}",
            f"{rate:,.0f}",
            f"{self.counters.updates:,}",
            test,
            f" | dropped updates {dropped}" if dropped else "",
        )

    def check_limits(self, elapsed: float) -> None:
        cfg = self.cfg
        if cfg.max_steps and self.counters.frames >= cfg.max_steps:
            self.request_stop(f"reached --max-steps {cfg.max_steps:,} frames")
        elif cfg.max_time and elapsed >= cfg.max_time:
            self.request_stop(f"reached --max-time {cfg.max_time:g} s")
        elif (
            cfg.target_score is not None
            and len(self.test_rewards) == cfg.target_window
            and sum(self.test_rewards) / cfg.target_window >= cfg.target_score
        ):
            self.request_stop(f"test mean of {cfg.target_window} games reached --target-score {cfg.target_score:g}")

    def shutdown(self, grace: float = 10.0) -> None:
        """Ask every process to stop, wait `grace` seconds, then terminate and kill what is left."""
        self.stop_event.set()
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

    def save_final(self) -> None:
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self.logger.error("shared weights are not finite; keeping the last saved checkpoint")
            self.exit_code = EXIT_FAILED
            return
        path = self.cfg.checkpoint_path(suffix="_last" if self.cfg.save_max else "")
        if not save_run(path, self.cfg, self.model, self.optimizer, self.counters, self.best_score, self.logger):
            self.exit_code = EXIT_FAILED
            return
        self.logger.info("saved %s", path)


def keep_previous_checkpoint(cfg: Config, logger) -> None:
    """A fresh run never overwrites an earlier run's checkpoint: move it aside, stamped with its time."""
    for suffix in ("", "_last"):
        path = cfg.checkpoint_path(suffix=suffix)
        if os.path.exists(path):
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(os.path.getmtime(path)))
            kept = cfg.checkpoint_path(suffix=f"{suffix}.{stamp}")
            os.replace(path, kept)
            logger.info("kept the previous run's checkpoint as %s (use --load to continue a run)", kept)


def main(argv: list[str] | None = None) -> int:
    early_signals: list[str] = []
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda signum, _frame: early_signals.append(signal.Signals(signum).name))
    try:
        cfg = parse_config(argv)
        num_actions, ckpt = prepare(cfg)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logger = setup_logger("main", cfg.log_path("_log"))
    warning = preprocessing_warning(ckpt, resume_path(cfg)) if ckpt else None
    if warning:
        logger.warning("warning: %s", warning)
    if not cfg.load:
        keep_previous_checkpoint(cfg, logger)
    cores = os.cpu_count() or 1
    if cfg.workers > cores:
        logger.warning("warning: %d workers on %d CPU cores; they will share cores", cfg.workers, cores)
    devices = "CPU" if cfg.gpu_ids == (-1,) else "GPUs " + ",".join(map(str, cfg.gpu_ids))
    logger.info(
        "training %s with %d workers on %s; logs in %s, checkpoints in %s",
        cfg.env,
        cfg.workers,
        devices,
        cfg.log_dir,
        cfg.save_model_dir,
    )
    launcher = Launcher(cfg, num_actions, ckpt, logger)
    if early_signals:
        launcher.request_stop(f"{early_signals[0]} received during start-up")
    return launcher.run()


if __name__ == "__main__":
    sys.exit(main())
