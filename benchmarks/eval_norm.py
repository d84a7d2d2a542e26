"""Evaluation with fresh normalisation statistics per game against statistics carried across games.

    python -m benchmarks.eval_norm trained_models/PongNoFrameskip-v4.dat --games 20

gym_eval plays game i in a fresh env seeded seed + i, so the running mean/std of the frames starts anew each
game. The classic tool's gym_eval keeps one env, so the statistics run on from game to game (a lost game's env
is reset without a seed); the carried games here are api.Player's with its per-game restart switched off.
Both are played greedily with the same checkpoint; the script prints each one's mean, std, min and max, so
that one semantics can be chosen on measurements.
`--fresh-results` takes the fresh-per-game games from a results file that already played them with this
checkpoint (gym_eval's JSON, or a shipped model's JSON beside it) instead of playing them again.
"""

from __future__ import annotations

import json
import sys

from api import evaluate, load_agent
from checkpoint import load_checkpoint
from cli import Parser, run_command
from evaluation import summarize
from utils import UsageError


def summary(rewards: list[float]) -> str:
    s = summarize(rewards, seconds=0.0)
    return f"{s['mean']:.2f} ± {s['std']:.2f} (min {s['min']:g}, max {s['max']:g})"


def recorded_games(path: str, model: str, games: int, seed: int) -> list[float]:
    """The rewards of games seed .. seed + games - 1 from a results file played with `model`'s weights."""
    with open(path) as f:
        results = json.load(f)
    frames = results.get("trained_frames", results.get("frames"))
    if frames != load_checkpoint(model).frames:
        raise UsageError(f"{path} was played by a checkpoint of {frames} frames, not {model}: play them again")
    by_seed = {g["seed"]: g["reward"] for g in results["games"]}
    missing = [s for s in range(seed, seed + games) if s not in by_seed]
    if missing:
        raise UsageError(f"{path} has no game with seed {missing[0]}: pass --games or --seed that it covers")
    return [by_seed[s] for s in range(seed, seed + games)]


def measure(model: str, env: str | None, games: int, seed: int, workers: int, fresh_results: str | None = None):
    recorded = recorded_games(fresh_results, model, games, seed) if fresh_results is not None else None
    player = load_agent(model, env, seed=seed)
    try:
        carrying = player.env.set_wrapper_attr("per_game", False, force=False)  # the classic's one env
        assert carrying, "no NormalizeObservation.per_game to switch off"
        carried = [player.play()["reward"] for _ in range(games)]
        env_id = player.checkpoint.args.get("env") if env is None else env
    finally:
        player.close()
    if recorded is not None:
        fresh = recorded
    else:
        fresh = [g["reward"] for g in evaluate(model, env_id, episodes=games, seed=seed, workers=workers)["games"]]
    return {"env": env_id, "fresh": fresh, "carried": carried}


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="checkpoint to evaluate")
    p.add_argument("--env", help="env id (default: the one it was trained on)")
    p.add_argument("--games", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=2, help="processes for the fresh-per-game games")
    p.add_argument("--fresh-results", help="take the fresh-per-game games from this results JSON (same model)")
    args = p.parse_args(argv)

    def body() -> int:
        if args.games < 2:
            raise UsageError("--games must be at least 2")
        result = measure(args.model, args.env, args.games, args.seed, args.workers, args.fresh_results)
        print(f"{result['env']}, {args.games} greedy games each, seed {args.seed}:")
        print(f"| statistics | mean ± std |\n| --- | --- |\n| fresh per game (gym_eval) | {summary(result['fresh'])} |")
        print(f"| carried across games (classic gym_eval) | {summary(result['carried'])} |")
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
