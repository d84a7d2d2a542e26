"""The toolkit from Python: the very code the command lines run, as functions.

    from api import train, evaluate, load_agent
    from settings import Config

    run = train(Config(env="PongNoFrameskip-v4", workers=2, max_time=600))
    results = evaluate(run.checkpoint, "PongNoFrameskip-v4", episodes=10)
    player = load_agent(run.checkpoint)
    game = player.play(record=True)          # game["frames"]: the RGB screens

main.py and gym_eval.py parse flags and call train and evaluate. Importing this module starts no
process and writes no file. Bad input raises utils.UsageError with the line the command lines print.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from agent import Agent, describe_policy
from checkpoint import Checkpoint, check_fits, final_path, load_checkpoint, preprocessing_warning
from environment import make_env_for
from evaluation import EvalConfig, evaluate_games, play_recorded, prepare_eval, trained_skip_rate
from metrics import read_metrics, setup_logger
from model import A3Clstm
from mps import gpu_sharing, shared_gpus
from run_setup import build_run, check_limits, keep_previous_run, load_resume, prepare, resume_path, under_torchrun
from settings import Config, check_values, describe_bf16, usable_cpus
from supervisor import Supervisor, stop_signals
from utils import UsageError


@dataclass(frozen=True)
class TrainResult:
    exit_code: int  # what main.py exits with: 0 stopped as asked, 1 failed (see stop_reason)
    stop_reason: str
    checkpoint: str  # the final checkpoint
    frames: int
    updates: int
    best_score: float | None
    metrics: list[dict]  # one row per test game: wall_time, elapsed, frames, updates, reward, length, fps


def train(cfg: Config) -> TrainResult:
    """Train until a stop criterion of `cfg` (max_steps, max_time, target_score), Ctrl-C, SIGTERM or SIGHUP;
    blocks meanwhile, saves, and returns what happened. With cfg.load it resumes the newest checkpoint.
    Started by torchrun, it is one host of a multi-host run (distributed.py)."""
    with stop_signals() as received:
        check_values(cfg)
        if not under_torchrun():
            return train_host(cfg, received)
        from distributed import Cluster

        cluster = Cluster.join(cfg)
        try:
            return train_host(cluster.host_config(cfg), received, cluster)
        finally:
            cluster.leave()


def train_host(cfg: Config, received: list[str], cluster=None) -> TrainResult:
    """This host's part of a run: its checks, shared model and Supervisor (one host: the whole run)."""
    num_actions = prepare(cfg)
    resume = cfg.load or (cluster is not None and cluster.continues(cfg))
    ckpt = load_resume(cfg, num_actions, required=cluster is None) if resume else None
    if cluster is not None:
        ckpt = cluster.shared_checkpoint(cfg, ckpt)
    check_limits(cfg, ckpt)
    kept = [] if resume else keep_previous_run(cfg)  # before the log opens: a fresh run starts its own
    logger = setup_logger("main", cfg.log_path("_log"))
    if kept:
        logger.info("kept the previous run's files as %s (use --load to continue a run)", ", ".join(kept))
    warning = preprocessing_warning(ckpt, resume_path(cfg)) if ckpt else None
    if warning:
        logger.warning("warning: %s", warning)
    cpus = usable_cpus()
    if cfg.workers > cpus:
        logger.warning("warning: %d workers on %d usable CPUs; they will share them", cfg.workers, cpus)
    devices = "CPU" if cfg.gpu_ids == (-1,) else "GPUs " + ",".join(map(str, cfg.gpu_ids))
    logger.info(
        "training %s with %d workers on %s, %s test games; logs in %s, checkpoints in %s",
        *(cfg.env, cfg.workers, devices, describe_policy(cfg.test_stochastic, cfg.test_epsilon)),
        *(cfg.log_dir, cfg.save_model_dir),
    )
    device = cfg.device_for(0)
    graph = ", through a captured CUDA graph" if cfg.uses_cuda_graph(device) else ""
    logger.info("precision: %s; acting path: %s%s", describe_bf16(cfg.bf16, device), cfg.acting_path(device), graph)
    run = build_run(cfg, num_actions, ckpt, logger)
    peers = None
    if cluster is not None:
        from distributed import HostSync

        peers = HostSync(run, cluster)
        logger.info(
            "host %d of %d: weights synced every %g s (%s of the hosts' changes)%s",
            *(cfg.host, cfg.hosts, cfg.sync_interval, cfg.sync_op, "" if cfg.host == 0 else "; host 0 tests and saves"),
        )
    with gpu_sharing(cfg.mps, shared_gpus(cfg.gpu_ids, cfg.workers, test=cfg.host == 0), log_line(logger)) as under_mps:
        supervisor = Supervisor(run, logger, received, peers, under_mps)
        exit_code = supervisor.run()
    if peers is not None:
        peers.stop_agent_if_interrupted_elsewhere(logger)
    metrics = cfg.log_path("_metrics.csv")
    return TrainResult(
        exit_code=exit_code,
        stop_reason=supervisor.stop_reason or "",
        checkpoint=final_path(cfg),
        frames=run.counters.frames,
        updates=run.counters.updates,
        best_score=supervisor.best_score,
        metrics=read_metrics(metrics) if os.path.exists(metrics) else [],
    )


def log_line(logger):
    """`log(line, warning)` for code that reports through the run's log without holding a logger."""
    return lambda line, warning: (logger.warning if warning else logger.info)(line)


def evaluate(checkpoint: str, env: str = "PongNoFrameskip-v4", episodes: int = 100, **settings) -> dict:
    """Play `episodes` whole games with `checkpoint`; the results gym_eval.py prints and saves, as data.

    `settings` are EvalConfig's fields (seed, workers, stochastic, record, gif, results, ...), and the
    callbacks of run_evaluation.
    """
    on_start, on_game = settings.pop("on_start", None), settings.pop("on_game", None)
    cfg = EvalConfig(env=env, model_path=checkpoint, num_episodes=episodes, **settings)
    return run_evaluation(cfg, on_start, on_game)


def run_evaluation(cfg: EvalConfig, on_start=None, on_game=None) -> dict:
    """`evaluate` with its settings as one EvalConfig (what gym_eval.py fills from its flags).
    `on_start(cfg, checkpoint)` is called once all is checked, `on_game(game, games)` after each game."""
    cfg, ckpt = prepare_eval(cfg)
    if on_start is not None:
        on_start(cfg, ckpt)
    return evaluate_games(cfg, ckpt, on_game)


class Player:
    """A checkpoint's agent in one env, to play games greedily (or sampled) and keep their frames."""

    def __init__(self, ckpt: Checkpoint, env, seed: int):
        self.checkpoint = ckpt
        self.env = env
        self.model = A3Clstm(1, ckpt.num_actions, ckpt.hidden_size)
        self.model.load_state_dict(ckpt.model)
        self.agent = Agent(self.model.eval(), [self.env], torch.device("cpu"), seed=seed)

    def play(self, greedy: bool = True, record: bool = False, epsilon: float = 0.0) -> dict:
        """One whole game: its reward and length, and with `record` its RGB screens (one per agent step);
        `epsilon` as gym_eval's --epsilon."""
        reward, length, frames = play_recorded(self.agent, greedy, record, epsilon)
        return {"reward": reward, "length": length, "frames": frames}

    def close(self) -> None:
        self.agent.close()


def load_agent(
    checkpoint: str, env: str | None = None, env_config: str = EvalConfig.env_config, seed: int = EvalConfig.seed
) -> Player:
    """A Player for `checkpoint`, on `env` (default: the env it was trained on), set up as gym_eval's games."""
    ckpt = load_checkpoint(checkpoint)
    env_id = env or ckpt.args.get("env")
    if env_id is None:
        raise UsageError(f"{checkpoint} does not record its env (a classic state_dict): pass env=")
    cfg = EvalConfig(env_id, checkpoint, env_config=env_config, seed=seed, skip_rate=trained_skip_rate(ckpt))
    game = make_env_for(cfg, training=False, render_mode="rgb_array")
    try:
        check_fits(ckpt, checkpoint, game.action_space.n, ckpt.hidden_size, env_id)
    except UsageError:
        game.close()
        raise
    return Player(ckpt, game, seed)
