"""Evaluate a trained model: play whole games, report real (unclipped) scores, optionally record videos.

Games are played as the classic tool plays them: every life, with the LSTM state zeroed and FIRE
pressed after each lost life, scored over the whole game.

python gym_eval.py --env PongNoFrameskip-v4 --num-episodes 100 --workers 4 --record videos/ --gif
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
import torch.multiprocessing as mp

from agent import Agent, play_game
from environment import describe_env, frames_per_step, is_atari, make_env_for
from model import A3Clstm
from utils import (
    Checkpoint,
    UsageError,
    check_fits,
    check_gpus,
    load_checkpoint,
    preprocessing_warning,
    safe_name,
)

ATARI_FPS = 60  # the NTSC Atari 2600's frame rate (ALE's metadata says 30)


@dataclass(frozen=True)
class EvalConfig:
    env: str
    env_config: str
    num_episodes: int
    model_path: str
    results: str
    seed: int
    hidden_size: int
    skip_rate: int
    max_episode_length: int
    stochastic: bool
    device: str
    workers: int
    render: bool
    render_freq: int
    record: str | None
    gif: bool
    record_every: int


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Evaluate an A3C-LSTM checkpoint on whole games.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--env", default="PongNoFrameskip-v4", help="gymnasium env id the model was trained on")
    p.add_argument("--env-config", default="config.json", help="per-game crop settings (JSON)")
    p.add_argument("--num-episodes", type=int, default=100, help="games to play")
    p.add_argument("--load-model-dir", default="trained_models/", help="where <env>.dat is looked for")
    p.add_argument("--model", help="checkpoint file to evaluate (overrides --load-model-dir)")
    p.add_argument("--log-dir", default="logs/", help="where the JSON results go by default")
    p.add_argument("--results", help="JSON results file (default: <log-dir>/<env>_eval.json)")
    p.add_argument("--seed", type=int, default=1, help="game i is played with seed + i")
    p.add_argument("--hidden-size", type=int, help="LSTM hidden size (default: the checkpoint's)")
    p.add_argument("--skip-rate", type=int, help="frame skip on NoFrameskip ids (default: as trained, else 4)")
    p.add_argument("--max-episode-length", type=int, default=100000, help="agent steps before a game is cut off")
    p.add_argument("--stochastic", action="store_true", help="sample actions from the policy instead of argmax")
    p.add_argument("--gpu-id", type=int, default=-1, help="GPU to run the model on (-1: CPU)")
    p.add_argument("--workers", type=int, default=1, help="games played at once in separate processes")
    p.add_argument("--render", action="store_true", help="show games in a window")
    p.add_argument("--render-freq", type=int, default=1, help="with --render, show every N-th game")
    p.add_argument("--record", metavar="DIR", help="write games as MP4 videos of the raw frames into DIR")
    p.add_argument("--gif", action="store_true", help="with --record, write a GIF of each recorded game too")
    p.add_argument("--record-every", type=int, default=1, help="with --record, record every N-th game")
    return p


def parse_config(argv: list[str] | None) -> tuple[EvalConfig, Checkpoint]:
    args = build_parser().parse_args(argv)
    for name in ("num_episodes", "workers", "render_freq", "record_every", "max_episode_length"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.gif and not args.record:
        raise UsageError("--gif needs --record DIR")
    if args.render and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UsageError("--render needs a display and none is set (DISPLAY): use --record DIR to save videos instead")
    check_gpus([args.gpu_id])
    path = args.model or os.path.join(args.load_model_dir, f"{safe_name(args.env)}.dat")
    ckpt = load_checkpoint(path)
    num_actions = describe_env(args.env, args.env_config)
    hidden_size = args.hidden_size or ckpt.hidden_size
    check_fits(ckpt, path, num_actions, hidden_size, args.env)
    if args.record:
        try:
            os.makedirs(args.record, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--record {args.record} cannot be created ({e.strerror})") from None
    cfg = EvalConfig(
        env=args.env,
        env_config=args.env_config,
        num_episodes=args.num_episodes,
        model_path=path,
        results=args.results or os.path.join(args.log_dir, f"{safe_name(args.env)}_eval.json"),
        seed=args.seed,
        hidden_size=hidden_size,
        skip_rate=args.skip_rate or ckpt.args.get("skip_rate", 4),
        max_episode_length=args.max_episode_length,
        stochastic=args.stochastic,
        device="cpu" if args.gpu_id < 0 else f"cuda:{args.gpu_id}",
        workers=args.workers,
        render=args.render,
        render_freq=args.render_freq,
        record=args.record,
        gif=args.gif,
        record_every=args.record_every,
    )
    return cfg, ckpt


# The model each evaluation process plays with, loaded once per process by load_player.
_player: dict = {}


def load_player(cfg: EvalConfig, weights: dict) -> None:
    torch.set_num_threads(1)
    device = torch.device(cfg.device)
    model = A3Clstm(1, weights["actor_linear.weight"].shape[0], cfg.hidden_size)
    model.load_state_dict(weights)
    _player.update(cfg=cfg, model=model.to(device).eval(), device=device)


def play_one(index: int) -> dict:
    """Play game `index` with seed cfg.seed + index; a fresh env stack, so the result depends on the seed alone."""
    cfg, model, device = _player["cfg"], _player["model"], _player["device"]
    seed = cfg.seed + index
    recording = cfg.record is not None and index % cfg.record_every == 0
    render_mode = "human" if cfg.render and index % cfg.render_freq == 0 else "rgb_array" if recording else None
    env = make_env_for(cfg, training=False, render_mode=render_mode)
    torch.manual_seed(seed)
    agent = Agent(model, [env], device, seed=seed)
    frames = [env.render()] if recording else None
    on_step = (lambda: frames.append(env.render())) if recording else None
    reward, length, _ = play_game(agent, greedy=not cfg.stochastic, on_step=on_step)
    videos = write_videos(cfg, index, frames, env) if recording else []
    agent.close()
    return {"game": index, "seed": seed, "reward": reward, "length": length, "videos": videos}


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


def play_all(cfg: EvalConfig, weights: dict):
    """Yield game results in game order, from this process or from a pool of --workers processes."""
    if cfg.workers == 1:
        load_player(cfg, weights)
        yield from map(play_one, range(cfg.num_episodes))
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(cfg.workers, initializer=load_player, initargs=(cfg, weights)) as pool:
        yield from pool.imap(play_one, range(cfg.num_episodes))


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


def write_results(cfg: EvalConfig, ckpt: Checkpoint, games: list[dict], summary: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(cfg.results)), exist_ok=True)
    payload = {
        "env": cfg.env,
        "checkpoint": os.path.abspath(cfg.model_path),
        "trained_frames": ckpt.frames,
        "preprocessing": ckpt.preprocessing,
        "greedy": not cfg.stochastic,
        "config": asdict(cfg),
        "summary": summary,
        "games": games,
    }
    tmp = f"{cfg.results}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, cfg.results)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, ckpt = parse_config(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    warning = preprocessing_warning(ckpt, cfg.model_path)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"evaluating {cfg.model_path} ({ckpt.frames:,} frames trained) on {cfg.env}: "
        f"{cfg.num_episodes} games, {'stochastic' if cfg.stochastic else 'greedy'}, {cfg.workers} process(es)"
    )
    start = time.time()
    games: list[dict] = []
    try:
        for game in play_all(cfg, ckpt.model):
            games.append(game)
            mean = statistics.fmean(g["reward"] for g in games)
            print(
                f"game {game['game'] + 1}/{cfg.num_episodes}: reward {game['reward']:g}, length {game['length']}, "
                f"running mean {mean:.2f}",
                flush=True,
            )
    except KeyboardInterrupt:
        print(f"interrupted after {len(games)} games", file=sys.stderr)
        if not games:
            return 130
    summary = summarize([g["reward"] for g in games], time.time() - start)
    write_results(cfg, ckpt, games, summary)
    print(
        f"{summary['games']} games: mean {summary['mean']:.2f} ± {summary['std']:.2f}, min {summary['min']:g}, "
        f"max {summary['max']:g}, median {summary['median']:g}, wall time {summary['wall_time']:.1f} s"
    )
    print(f"results in {cfg.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
