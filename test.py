"""The test process: plays games (greedy, or sampled with --test-stochastic; with --test-epsilon some actions
random) with the latest shared weights, logs, plots and checkpoints."""

from __future__ import annotations

import os
import sys
import time

from agent import Agent, play_game
from checkpoint import save_run, saves_test_game
from environment import make_env_for
from hogwild import SharedLink
from metrics import append_metrics, plot_metrics, setup_logger, tensorboard_writer
from process import build_model, init_process
from run_state import RunShared
from settings import Config
from utils import format_duration


def test_process(run: RunShared, incarnation: int = 0):
    """Process entry; logs the error before dying so the launcher's restart has a reason on record."""
    seed = run.cfg.seed_for(run.cfg.workers, incarnation)
    init_process("a3c test", seed, run.cfg.device_for(0))
    os.nice(5)  # the workers come first: on a machine with workers = cores the test games yield to them
    logger = setup_logger("test", run.cfg.log_path("_log"))
    logger.info("test started on %s with seed %d", run.cfg.device_for(0), seed)
    try:
        run_tests(run, logger, seed)
    except Exception:
        logger.exception("test process died")
        sys.exit(1)


def build_test_agent(cfg: Config, env, device, seed: int) -> Agent:
    """The test games' agent: the workers' model layout and precision (--channels-last, --bf16)."""
    model = build_model(env.action_space.n, cfg, device).eval()
    return Agent(model, [env], device, seed=seed, bf16=cfg.uses_bf16(device))


def run_tests(run: RunShared, logger, seed: int):
    cfg, counters = run.cfg, run.counters
    device = cfg.device_for(0)
    env = make_env_for(cfg, training=False)
    agent = build_test_agent(cfg, env, device, seed)
    link = SharedLink(run.model, agent.model, device)
    writer = tensorboard_writer(cfg)
    rewards: list[float] = []

    def should_stop():
        return run.stop.is_set() or os.getppid() != run.parent_pid

    frames_before, time_before = counters.frames, time.time()
    try:
        while not should_stop():
            link.pull()
            game = play_game(agent, greedy=not cfg.test_stochastic, should_stop=should_stop, epsilon=cfg.test_epsilon)
            if game is None:
                break
            reward, length, _ = game
            rewards.append(reward)
            elapsed = run.clock.elapsed()
            frames = counters.frames
            fps = (frames - frames_before) / max(time.time() - time_before, 1e-9)
            frames_before, time_before = frames, time.time()
            mean = sum(rewards[-cfg.target_window :]) / len(rewards[-cfg.target_window :])
            logger.info(
                "Time %s, episode reward %g, episode length %d, reward mean %.4f, frames %d, frames/s %.0f",
                format_duration(elapsed),
                reward,
                length,
                mean,
                frames,
                fps,
            )
            row = {
                "wall_time": time.time(),
                "elapsed": elapsed,
                "frames": frames,
                "updates": counters.updates,
                "reward": reward,
                "length": length,
                "fps": fps,
            }
            append_metrics(cfg.log_path("_metrics.csv"), row)
            plot_metrics([cfg.log_path("_metrics.csv")], cfg.log_path(".png"), f"{cfg.env}: A3C-LSTM test games")
            if writer is not None:
                for name in ("reward", "length", "fps"):
                    writer.add_scalar(f"test/{name}", row[name], frames)
            best = run.results.best
            run.results.put(reward, length)
            if saves_test_game(cfg, reward, best):
                # --save-max keeps the weights that played the game; otherwise the shared weights of now, which
                # match the optimizer statistics, frames and time saved with them, for --load after a crash
                weights = agent.model if cfg.save_max else run.model
                save_run(cfg.checkpoint_path(), run, weights, run.results.best, logger)
            run.stop.wait(cfg.test_interval)
    finally:
        agent.close()
        if writer is not None:
            writer.close()


if __name__ == "__main__":
    print("test.py is the launcher's test process; start training with python main.py", file=sys.stderr)
    sys.exit(2)
