"""Evaluation: whole games with a checkpoint, played in this process or in a pool, summarised, recorded.

Games are played as the classic tool plays them: every life, with the LSTM state zeroed and FIRE
pressed after each lost life, scored over the whole game. Game i is played with seed + i in a fresh
env, so a pool of processes gives exactly the results of a serial run.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace

import cv2
import numpy as np
import torch
import torch.multiprocessing as mp

from agent import Agent, play_game
from checkpoint import Checkpoint, check_fits, load_checkpoint
from environment import describe_env, frames_per_step, is_atari, make_env_for
from model import A3Clstm
from mps import gpu_sharing, shared_gpus
from process import use_device
from settings import Config, bf16_for, check_choices, check_gpus, check_probability, same_setting, setting
from utils import UsageError, atomic_write, safe_name

ATARI_FPS = 60  # the NTSC Atari 2600's frame rate (ALE's metadata says 30)


@dataclass(frozen=True)
class EvalConfig:
    """Every setting of an evaluation (gym_eval.py's flags are made from them); hidden_size and skip_rate None
    mean: as the checkpoint was trained."""

    env: str = same_setting("env", help="gymnasium env id the model was trained on")
    model_path: str | None = setting(
        None, "checkpoint file to evaluate (default: <load-model-dir>/<env>.dat)", flag="--model"
    )
    env_config: str = same_setting("env_config")
    num_episodes: int = setting(100, "games to play", short="-ne")
    results: str | None = setting(None, "JSON results file (default: <log-dir>/<env>_eval.json)")
    seed: int = setting(1, "game i is played with seed + i", short="-s")
    hidden_size: int | None = setting(None, "LSTM hidden size (default: the checkpoint's)", short="-hs")
    skip_rate: int | None = setting(None, "frame skip on NoFrameskip ids (default: as trained, else 4)", short="-sk")
    max_episode_length: int = same_setting(
        "max_episode_length",
        default=100000,  # games are played to their end: ALE's own limit comes first on Atari ids
        help="agent steps before a game is cut off (ALE ends v4 ids' games at 108,000 frames itself)",
    )
    stochastic: bool = setting(False, "sample actions from the policy instead of argmax")
    epsilon: float = setting(
        0.0,
        "chance of a uniformly random action at each step, as DQN's evaluations play (0.05, 0.01, 0.001): breaks "
        "the state loops a greedy policy can fall into on a deterministic env (0: none, as the classic tool)",
    )
    bf16: str = same_setting("bf16")
    gpu_id: int = setting(-1, "GPU to run the model on (-1: CPU)", short="-gid")
    workers: int = setting(1, "games played at once in separate processes")
    render: bool = setting(False, "show games in a window", short="-r")
    render_freq: int = setting(1, "with --render, show every N-th game", short="-rf")
    record: str | None = setting(None, "write games as MP4 videos of the raw frames into this folder")
    gif: bool = setting(False, "with --record, write a GIF of each recorded game too")
    record_every: int = setting(1, "with --record, record every N-th game")

    @property
    def device(self) -> torch.device:
        return torch.device("cpu") if self.gpu_id < 0 else torch.device("cuda", self.gpu_id)


def prepare_eval(cfg: EvalConfig) -> tuple[EvalConfig, Checkpoint]:
    """Check every setting and the checkpoint before a game starts (UsageError, one line, on bad input);
    return the settings with the checkpoint's hidden size and skip rate filled in, and the checkpoint."""
    if cfg.model_path is None:
        raise UsageError("no checkpoint given: pass --model FILE (or model_path= from Python)")
    for name in ("num_episodes", "workers", "render_freq", "record_every", "max_episode_length"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    check_probability("--epsilon", cfg.epsilon)
    check_choices(cfg)
    if cfg.gif and not cfg.record:
        raise UsageError("--gif needs --record DIR")
    if cfg.render and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UsageError("--render needs a display and none is set (DISPLAY): use --record DIR to save videos instead")
    check_gpus([cfg.gpu_id])
    ckpt = load_checkpoint(cfg.model_path)
    num_actions = describe_env(cfg.env, cfg.env_config)
    hidden_size = cfg.hidden_size or ckpt.hidden_size
    check_fits(ckpt, cfg.model_path, num_actions, hidden_size, cfg.env)
    if cfg.record:
        try:
            os.makedirs(cfg.record, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--record {cfg.record} cannot be created ({e.strerror})") from None
    return replace(cfg, hidden_size=hidden_size, skip_rate=cfg.skip_rate or trained_skip_rate(ckpt)), ckpt


def trained_skip_rate(ckpt: Checkpoint) -> int:
    """The frame skip a checkpoint was trained with; a classic state_dict records none: the classic's own."""
    return ckpt.args.get("skip_rate", Config.skip_rate)


@dataclass(frozen=True)
class EvalPlayer:
    """The model an evaluation plays with, on its device."""

    cfg: EvalConfig
    model: A3Clstm
    device: torch.device


def make_player(cfg: EvalConfig, weights: dict) -> EvalPlayer:
    model = A3Clstm(1, weights["actor_linear.weight"].shape[0], cfg.hidden_size)
    model.load_state_dict(weights)
    return EvalPlayer(cfg, model.to(cfg.device).eval(), cfg.device)


def play_one(player: EvalPlayer, index: int) -> dict:
    """Play game `index` with seed cfg.seed + index; a fresh env stack, so the result depends on the seed alone."""
    cfg = player.cfg
    seed = cfg.seed + index
    recording = cfg.record is not None and index % cfg.record_every == 0
    render_mode = "human" if cfg.render and index % cfg.render_freq == 0 else "rgb_array" if recording else None
    env = make_env_for(cfg, training=False, render_mode=render_mode)
    torch.manual_seed(seed)
    agent = Agent(player.model, [env], player.device, seed=seed, bf16=bf16_for(cfg.bf16, player.device))
    reward, length, frames = play_recorded(agent, greedy=not cfg.stochastic, record=recording, epsilon=cfg.epsilon)
    videos = write_videos(cfg, index, frames, env) if recording else []
    agent.close()
    return {"game": index, "seed": seed, "reward": reward, "length": length, "videos": videos}


# A pool process's player, set once by its initializer (a pool passes only the game index per task).
_pool_player: EvalPlayer | None = None


def init_pool_process(cfg: EvalConfig, weights: dict) -> None:
    global _pool_player
    torch.set_num_threads(1)  # one game per process: the processes are the parallelism
    use_device(cfg.device)
    _pool_player = make_player(cfg, weights)


def play_in_pool(index: int) -> dict:
    return play_one(_pool_player, index)


def play_recorded(
    agent: Agent, greedy: bool, record: bool, epsilon: float = 0.0
) -> tuple[float, int, list[np.ndarray]]:
    """One whole game in the agent's env 0: reward, length and, with `record`, the RGB screen before the
    first step and after each one (the game's own last screen: environment.KeepScreen)."""
    env = agent.envs[0]
    env.set_wrapper_attr("keeping", record, force=False)  # no KeepScreen: nothing to switch
    frames = [env.render()] if record else []
    on_step = (lambda: frames.append(env.get_wrapper_attr("screen"))) if record else None
    reward, length, _ = play_game(agent, greedy=greedy, on_step=on_step, epsilon=epsilon)
    return reward, length, frames


def write_videos(cfg: EvalConfig, index: int, frames: list[np.ndarray], env) -> list[str]:
    """MP4 (and GIF) of the RGB screens the agent saw, timed to play at the game's real speed."""
    native_fps = ATARI_FPS if is_atari(env) else env.metadata.get("render_fps", 30)
    fps = native_fps / frames_per_step(env)
    stem = os.path.join(cfg.record, f"{safe_name(cfg.env)}_game{index:04d}")
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(f"{stem}.mp4", cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    paths = [f"{stem}.mp4"]
    if cfg.gif:
        from PIL import Image

        images = [Image.fromarray(frame) for frame in frames]
        # GIF delays are whole centiseconds: step them so that the clock never drifts from the game's
        ticks = [round(i * 100 / fps) * 10 for i in range(len(images) + 1)]
        durations = [b - a for a, b in zip(ticks, ticks[1:])]
        images[0].save(f"{stem}.gif", save_all=True, append_images=images[1:], duration=durations, loop=0)
        paths.append(f"{stem}.gif")
    return paths


@contextmanager
def one_thread():
    """One intra-op thread while the block runs, then the caller's count again. A game's batch-1 forward gains
    nothing from more, and beside a training run their spin-waits cost it six times the time (a Pong game on
    2 busy cores: 17 s against 102 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def play_all(cfg: EvalConfig, weights: dict):
    """Yield game results in game order, from this process or from a pool of --workers processes."""
    if cfg.workers == 1:
        with one_thread(), torch.cuda.device(cfg.device) if cfg.device.type == "cuda" else nullcontext():
            player = make_player(cfg, weights)  # on its GPU as the current device: see process.use_device
            yield from (play_one(player, index) for index in range(cfg.num_episodes))
        return
    ctx = mp.get_context("spawn")
    shared = shared_gpus((cfg.gpu_id,), cfg.workers, test=False)  # the pool's processes, on one GPU or the CPU
    with gpu_sharing(Config.mps, shared, print_mps_line):  # as training's workers share a GPU (README: A3G and MPS)
        with ctx.Pool(cfg.workers, initializer=init_pool_process, initargs=(cfg, weights)) as pool:
            yield from pool.imap(play_in_pool, range(cfg.num_episodes))


def print_mps_line(line: str, warning: bool) -> None:
    print(line, file=sys.stderr if warning else sys.stdout, flush=True)


def summarize(rewards: list[float], seconds: float) -> dict:
    return {
        "games": len(rewards),
        "mean": statistics.fmean(rewards),
        "std": statistics.pstdev(rewards),
        "min": min(rewards),
        "max": max(rewards),
        "median": statistics.median(rewards),
        "wall_time": seconds,
    }


def evaluate_games(cfg: EvalConfig, ckpt: Checkpoint, on_game=None) -> dict:
    """Play cfg.num_episodes games; return the results (and write them as JSON to cfg.results if set).
    The caller's process is left as it was: its thread count, its torch random state.

    `on_game(game, games)` is called after each game. A Ctrl-C after the first game ends the evaluation
    with the games played so far (`interrupted` is then true); before it, KeyboardInterrupt propagates.
    """
    start = time.time()
    games: list[dict] = []
    interrupted = False
    try:
        with torch.random.fork_rng(devices=[cfg.gpu_id] if cfg.gpu_id >= 0 else []):  # the caller's RNG stays
            for game in play_all(cfg, ckpt.model):
                games.append(game)
                if on_game is not None:
                    on_game(game, games)
    except KeyboardInterrupt:
        if not games:
            raise
        interrupted = True
    results = {
        "env": cfg.env,
        "checkpoint": os.path.abspath(cfg.model_path),
        "trained_frames": ckpt.frames,
        "preprocessing": ckpt.preprocessing,
        "greedy": not cfg.stochastic,
        "interrupted": interrupted,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": asdict(cfg),
        "summary": summarize([g["reward"] for g in games], time.time() - start),
        "games": games,
    }
    if cfg.results:
        write_results(cfg.results, results)
    return results


def write_results(path: str, results: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as f:
        json.dump(results, f, indent=2)
