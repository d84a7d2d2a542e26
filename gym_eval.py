"""Evaluate a trained model: play whole games, report real (unclipped) scores, optionally record videos.

Games are played as the classic tool plays them: every life, with the LSTM state zeroed and FIRE
pressed after each lost life, scored over the whole game.

python gym_eval.py --env PongNoFrameskip-v4 --num-episodes 100 --workers 4 --record videos/ --gif
"""

from __future__ import annotations

import os
import statistics
import sys

from api import run_evaluation
from checkpoint import Checkpoint, preprocessing_warning
from cli import Parser, run_command
from evaluation import EvalConfig
from settings import Config
from utils import safe_name

# rl_a3c_pytorch's gym_eval.py short spellings, so that a classic evaluation command runs unchanged.
CLASSIC_SHORT = {
    "--env": "-ev",
    "--env-config": "-evc",
    "--num-episodes": "-ne",
    "--load-model-dir": "-lmd",
    "--log-dir": "-lgd",
    "--render": "-r",
    "--render-freq": "-rf",
    "--max-episode-length": "-mel",
    "--new-gym-eval": "-nge",
    "--seed": "-s",
    "--gpu-id": "-gid",
    "--hidden-size": "-hs",
    "--skip-rate": "-sk",
}


def build_parser() -> Parser:
    train = Config()
    ev = EvalConfig(env=train.env, model_path="")  # the defaults, written once there
    p = Parser(prog="gym_eval.py", description="Evaluate an A3C-LSTM checkpoint on whole games.", short=CLASSIC_SHORT)
    p.add_argument("--env", default=train.env, help="gymnasium env id the model was trained on")
    p.add_argument("--env-config", default=ev.env_config, help="per-game crop settings (JSON)")
    p.add_argument("--num-episodes", type=int, default=ev.num_episodes, help="games to play")
    p.add_argument("--load-model-dir", default=train.load_model_dir, help="where <env>.dat is looked for")
    p.add_argument("--model", help="checkpoint file to evaluate (overrides --load-model-dir)")
    p.add_argument("--log-dir", default=train.log_dir, help="where the JSON results go by default")
    p.add_argument("--results", help="JSON results file (default: <log-dir>/<env>_eval.json)")
    p.add_argument("--seed", type=int, default=ev.seed, help="game i is played with seed + i")
    p.add_argument("--hidden-size", type=int, help="LSTM hidden size (default: the checkpoint's)")
    p.add_argument("--skip-rate", type=int, help="frame skip on NoFrameskip ids (default: as trained, else 4)")
    p.add_argument(
        "--max-episode-length", type=int, default=ev.max_episode_length, help="agent steps before a game is cut off"
    )
    p.add_argument("--stochastic", action="store_true", help="sample actions from the policy instead of argmax")
    p.add_argument("--gpu-id", type=int, default=ev.gpu_id, help="GPU to run the model on (-1: CPU)")
    p.add_argument("--workers", type=int, default=ev.workers, help="games played at once in separate processes")
    p.add_argument("--render", action="store_true", help="show games in a window")
    p.add_argument("--render-freq", type=int, default=ev.render_freq, help="with --render, show every N-th game")
    p.add_argument("--record", metavar="DIR", help="write games as MP4 videos of the raw frames into DIR")
    p.add_argument(
        "--new-gym-eval",
        action="store_true",
        help="the classic flag: record every game into <env>_monitor/ (as --record <env>_monitor)",
    )
    p.add_argument("--gif", action="store_true", help="with --record, write a GIF of each recorded game too")
    p.add_argument("--record-every", type=int, default=ev.record_every, help="with --record, record every N-th game")
    return p


def parse_config(argv: list[str] | None) -> EvalConfig:
    args = build_parser().parse_args(argv)
    record = args.record or (f"{safe_name(args.env)}_monitor" if args.new_gym_eval else None)
    return EvalConfig(
        env=args.env,
        model_path=args.model or os.path.join(args.load_model_dir, f"{safe_name(args.env)}.dat"),
        env_config=args.env_config,
        num_episodes=args.num_episodes,
        results=args.results or os.path.join(args.log_dir, f"{safe_name(args.env)}_eval.json"),
        seed=args.seed,
        hidden_size=args.hidden_size,
        skip_rate=args.skip_rate,
        max_episode_length=args.max_episode_length,
        stochastic=args.stochastic,
        gpu_id=args.gpu_id,
        workers=args.workers,
        render=args.render,
        render_freq=args.render_freq,
        record=record,
        gif=args.gif,
        record_every=args.record_every,
    )


def print_game(game: dict, games: list[dict], episodes: int) -> None:
    mean = statistics.fmean(g["reward"] for g in games)
    print(
        f"game {game['game'] + 1}/{episodes}: reward {game['reward']:g}, length {game['length']}, "
        f"running mean {mean:.2f}",
        flush=True,
    )


def print_start(cfg: EvalConfig, ckpt: Checkpoint) -> None:
    warning = preprocessing_warning(ckpt, cfg.model_path)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"evaluating {cfg.model_path} ({ckpt.frames:,} frames trained) on {cfg.env}: "
        f"{cfg.num_episodes} games, {'stochastic' if cfg.stochastic else 'greedy'}, {cfg.workers} process(es)"
    )


def main(argv: list[str] | None = None) -> int:
    try:
        return run_command(lambda: evaluate_and_report(parse_config(argv)))
    except KeyboardInterrupt:
        print("interrupted before the first game ended", file=sys.stderr)
        return 130


def evaluate_and_report(cfg: EvalConfig) -> int:
    results = run_evaluation(
        cfg, on_start=print_start, on_game=lambda game, games: print_game(game, games, cfg.num_episodes)
    )
    summary = results["summary"]
    if results["interrupted"]:
        print(f"interrupted after {summary['games']} games", file=sys.stderr)
    print(
        f"{summary['games']} games: mean {summary['mean']:.2f} ± {summary['std']:.2f}, min {summary['min']:g}, "
        f"max {summary['max']:g}, median {summary['median']:g}, wall time {summary['wall_time']:.1f} s"
    )
    print(f"results in {cfg.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
