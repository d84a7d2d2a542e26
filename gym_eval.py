"""Evaluate a trained model: play whole games, report real (unclipped) scores, optionally record videos.

Games are played as the classic tool plays them: every life, with the LSTM state zeroed and FIRE
pressed after each lost life, scored over the whole game.

python gym_eval.py --env PongNoFrameskip-v4 --num-episodes 100 --workers 4 --record videos/ --gif
"""

from __future__ import annotations

import os
import statistics
import sys
from dataclasses import dataclass

from agent import describe_policy
from api import run_evaluation
from checkpoint import Checkpoint, preprocessing_warning
from cli import Parser, add_config_flags, classic_short, config_from, run_command
from evaluation import EvalConfig
from settings import same_setting, setting
from utils import safe_name


@dataclass(frozen=True)
class EvalCommand:
    """gym_eval.py's flags that are not evaluation settings: where the checkpoint and the results go by default,
    and the classic's recording flag."""

    load_model_dir: str = same_setting("load_model_dir")
    log_dir: str = same_setting("log_dir", help="where the JSON results go by default", short="-lgd")
    new_gym_eval: bool = setting(
        False, "the classic flag: record every game into <env>_monitor/ (as --record <env>_monitor)", short="-nge"
    )


def build_parser() -> Parser:
    description = "Evaluate an A3C-LSTM checkpoint on whole games."
    p = Parser(prog="gym_eval.py", description=description, short=classic_short(EvalConfig, EvalCommand))
    add_config_flags(p, EvalConfig)
    add_config_flags(p, EvalCommand)
    return p


def parse_config(argv: list[str] | None) -> EvalConfig:
    args = build_parser().parse_args(argv)
    command, name = config_from(args, EvalCommand), safe_name(args.env)
    return config_from(
        args,
        EvalConfig,
        model_path=args.model_path or os.path.join(command.load_model_dir, f"{name}.dat"),
        results=args.results or os.path.join(command.log_dir, f"{name}_eval.json"),
        record=args.record or (f"{name}_monitor" if command.new_gym_eval else None),
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
        f"{cfg.num_episodes} games, {describe_policy(cfg.stochastic, cfg.epsilon)}, {cfg.workers} process(es)"
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
