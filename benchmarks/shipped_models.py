"""The models shipped in trained_models/: ship one (weights and its evaluation in a JSON beside it); draw the
README's table.

    python -m benchmarks.shipped_models ship runs/models/PongNoFrameskip-v4_last.dat \
        --hardware "2 CPU cores (AMD EPYC)" --command "python main.py --save-max ..."
    python -m benchmarks.shipped_models epsilon trained_models/BreakoutNoFrameskip-v4.json --epsilon 0.001
    python -m benchmarks.shipped_models table --readme README.md

`ship` writes the checkpoint's weights, counters and settings, without the optimizer statistics (a third of
the size; `--load` from it restores weights only), as trained_models/<env>.dat, plays --episodes whole games
with it (gym_eval's games: greedy, game i with seed --seed + i) and writes trained_models/<env>.json: env,
frames, training time, hardware, the training command, and every game's reward. `epsilon` plays a shipped
model's games again with gym_eval's --epsilon (a random action with that chance per step: DQN's evaluation
protocol, which can end the loops greedy play falls into) and adds them to its JSON; with --results it takes
the games of such a gym_eval run already played with that model instead. `table` prints the results table from
every trained_models/*.json; with --readme it rewrites the README's table between its `results` markers.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from dataclasses import replace

from api import evaluate
from benchmarks.bench import hardware as bench_hardware
from benchmarks.sittings import read_sittings
from checkpoint import load_checkpoint, save_checkpoint
from cli import Parser, run_command
from evaluation import EvalConfig, trained_skip_rate
from gym_eval import print_game
from settings import usable_cpus
from utils import UsageError, atomic_write, safe_name

GYM_EVAL_RESULTS = {"env", "trained_frames", "config", "interrupted", "summary", "games"}
GYM_EVAL_CONFIG = {"seed", "epsilon", "stochastic", "bf16", "gpu_id", "max_episode_length", "env_config", "skip_rate"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "trained_models")
PRECISION = "off"  # --bf16 of the shipped figures: fp32 plays the same games on every CPU
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def ship(source: str, models_dir: str = MODELS) -> str:
    """Write `source` without its optimizer statistics into `models_dir`; return the path written."""
    ckpt = load_checkpoint(source)
    env = ckpt.args.get("env")
    if env is None:
        raise UsageError(f"{source} does not record its env: ship a checkpoint this toolkit saved")
    path = os.path.join(models_dir, f"{safe_name(env)}.dat")
    save_checkpoint(path, replace(ckpt, optimizer=None))
    return path


def describe(
    path: str,
    hardware: str,
    command: str,
    episodes: int,
    seed: int,
    workers: int,
    seconds: float | None,
    sittings: list[dict] | None = None,
):
    """Evaluate the model at `path` and return the JSON that goes beside it (with the sittings that trained it,
    where the run recorded them: benchmarks/sittings.py)."""
    ckpt = load_checkpoint(path)
    env = ckpt.args["env"]
    results = play_games(path, env, episodes, seed, workers)
    return {
        "env": env,
        "checkpoint": os.path.basename(path),
        "frames": ckpt.frames,
        "updates": ckpt.updates,
        "training_seconds": seconds if seconds is not None else ckpt.elapsed,
        "hardware": hardware,
        "command": command,
        "evaluated": evaluated(seed),
        "evaluation": summary_of(results),
        "games": kept_games(results),
    } | ({"sittings": sittings} if sittings else {})


def play_games(path: str, env: str, episodes: int, seed: int, workers: int, epsilon: float = 0.0) -> dict:
    """gym_eval's games with the model at `path`, in the shipped figures' precision, each printed as it ends.
    A Ctrl-C stops them with nothing written: a shipped figure is always of every game asked for."""
    results = evaluate(
        path,
        env,
        episodes=episodes,
        seed=seed,
        workers=workers,
        epsilon=epsilon,
        bf16=PRECISION,
        on_game=lambda game, games: print_game(game, games, episodes),
    )
    if results["interrupted"]:
        raise UsageError(f"interrupted after {results['summary']['games']} of {episodes} games: nothing written")
    return results


def evaluated(seed: int) -> dict:
    """Where and how an evaluation of a shipped model ran."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit.stdout.strip(),
        "seed": seed,
        "hardware": bench_hardware(),
        "bf16": PRECISION,
    }


def kept_games(results: dict) -> list[dict]:
    """What a shipped JSON keeps of each game: its seed, reward and length."""
    return [{"seed": g["seed"], "reward": g["reward"], "length": g["length"]} for g in results["games"]]


def summary_of(results: dict) -> dict:
    return {k: results["summary"][k] for k in ("games", "mean", "std", "min", "max", "median")}


def add_epsilon_evaluation(meta: str, epsilon: float, episodes: int, seed: int, workers: int) -> dict:
    """Play the model of the shipped JSON `meta` with --epsilon `epsilon` and write the result into the JSON
    as its "epsilon_evaluation" (replacing an earlier one); return that block."""
    if epsilon <= 0:
        raise UsageError(f"--epsilon {epsilon:g}: give a chance above 0 (0 plays the greedy games again)")
    data = read_shipped(meta)
    path = os.path.join(os.path.dirname(meta), data["checkpoint"])
    results = play_games(path, data["env"], episodes, seed, workers, epsilon)
    return write_epsilon_evaluation(meta, data, epsilon, results, evaluated(seed))


def import_epsilon_evaluation(meta: str, results_path: str, epsilon: float, hardware: str) -> dict:
    """Write the games of a gym_eval --epsilon run already played with the shipped model (its --results JSON,
    played on `hardware`) into the JSON `meta`, as add_epsilon_evaluation does; return that block. Refused
    where those games are not the shipped model's, or not played as the shipped figures are."""
    data, results = read_shipped(meta), read_json(results_path)
    cfg = results.get("config") if isinstance(results, dict) else None
    if not isinstance(cfg, dict) or not (GYM_EVAL_RESULTS <= results.keys() and GYM_EVAL_CONFIG <= cfg.keys()):
        raise UsageError(f"{results_path} is not a gym_eval results JSON (gym_eval.py --results)")
    if results["env"] != data["env"] or results["trained_frames"] != data["frames"]:
        raise UsageError(
            f"{results_path} evaluated a model of {results['env']} trained {results['trained_frames']:,} frames, "
            f"not the shipped one ({data['env']}, {data['frames']:,} frames): give that model's results"
        )
    ckpt = load_checkpoint(os.path.join(os.path.dirname(meta), data["checkpoint"]))
    played_as = {
        "epsilon": epsilon,
        "stochastic": False,
        "bf16": PRECISION,
        "gpu_id": -1,  # the CPU: a GPU's kernels (TF32 convolutions, its own random numbers) play other games
        "max_episode_length": EvalConfig.max_episode_length,
        "env_config": EvalConfig.env_config,
        "skip_rate": trained_skip_rate(ckpt),
    }
    for name, wanted in played_as.items():
        if cfg[name] != wanted:
            raise UsageError(f"{results_path} was played with {name} {cfg[name]}, not {wanted} as shipped figures are")
    if results["interrupted"]:
        raise UsageError(f"{results_path} is of an interrupted run: give a whole one")
    where = {
        "results": os.path.relpath(results_path, ROOT),
        **({"date": results["date"]} if "date" in results else {}),
        "seed": cfg["seed"],
        "hardware": hardware,
        "bf16": PRECISION,
    }
    return write_epsilon_evaluation(meta, data, epsilon, results, where)


def write_epsilon_evaluation(meta: str, data: dict, epsilon: float, results: dict, where: dict) -> dict:
    games = kept_games(results)
    longest = max(g["length"] for g in games)
    block = {"epsilon": epsilon, **summary_of(results), "longest": longest, "evaluated": where, "played": games}
    with atomic_write(meta) as f:
        json.dump(data | {"epsilon_evaluation": block}, f, indent=2)
    return block


def read_shipped(meta: str) -> dict:
    """A shipped model's JSON (what `ship` wrote)."""
    data = read_json(meta)
    if not isinstance(data, dict) or not {"env", "checkpoint", "frames", "evaluation", "games"} <= data.keys():
        raise UsageError(f"{meta} is not a shipped model's JSON (trained_models/<env>.json)")
    return data


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None


def shipped() -> list[dict]:
    models = []
    for path in sorted(glob.glob(os.path.join(MODELS, "*.json"))):
        with open(path) as f:
            models.append(json.load(f))
    return models


# rl_a3c_pytorch's README: its best 100-game mean on gym's ids (-v0: sticky actions, random frame skip 2-4).
CLASSIC = {
    "Pong": "20.96 ± 0.02 (Pong-v0)",
    "Breakout": "739.30 ± 18.43 (Breakout-v0)",
    "SpaceInvaders": "5808.45 ± 337.28 (SpaceInvaders-v0)",
    "BeamRider": "8441.22 ± 221.24 (BeamRider-v0)",
    "MsPacman": "6323.01 ± 116.91 (MsPacman-v0)",
    "Seaquest": "54203.50 ± 1509.85 (Seaquest-v0)",
}


def classic_figure(env: str) -> str:
    """The classic's published figure for env's game, with the id it was measured on; "-" where it has none."""
    game = env.removeprefix("ALE/").split("NoFrameskip")[0].split("Deterministic")[0].split("-v")[0]
    return CLASSIC.get(game, "-")


def epsilon_figure(model: dict) -> str:
    """The model's score with gym_eval's --epsilon, and the epsilon; "-" where it was not evaluated so."""
    e = model.get("epsilon_evaluation")
    return f"{e['mean']:.2f} ± {e['std']:.2f} (ε {e['epsilon']:g})" if e else "-"


def table(models: list[dict]) -> str:
    lines = [
        "| game | score (mean ± std) | with --epsilon | games | frames | training time | hardware "
        "| the classic's (its id) |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for m in models:
        e = m["evaluation"]
        lines.append(
            f"| {m['env']} | {e['mean']:.2f} ± {e['std']:.2f} | {epsilon_figure(m)} | {e['games']} "
            f"| {m['frames'] / 1e6:.2f} M | {m['training_seconds'] / 60:.0f} min | {m['hardware']} "
            f"| {classic_figure(m['env'])} |"
        )
    return "\n".join(lines)


def write_readme(readme: str, text: str) -> None:
    with open(readme) as f:
        content = f.read()
    if BEGIN not in content or END not in content:
        raise UsageError(f"{readme} has no {BEGIN} ... {END} block: add one where the table goes")
    head, rest = content.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    with atomic_write(readme) as f:
        f.write(f"{head}{BEGIN}\n{text}\n{END}{tail}")


EPISODES, SEED = 100, 1  # the games `ship` and `epsilon` play: gym_eval's seeds 1 to 100
PLAYING = ("episodes", "seed", "workers")


def add_evaluation_flags(parser) -> None:
    """The games a subcommand plays: how many, the first game's seed, and in how many processes. A flag not
    given is left out of the parsed flags (playing_flags fills in its default), so that one given where no
    game is played can be refused."""
    absent = {"type": int, "default": argparse.SUPPRESS}
    parser.add_argument("--episodes", **absent, help=f"games to play (default: {EPISODES})")
    parser.add_argument("--seed", **absent, help=f"game i is played with seed + i, as in gym_eval (default: {SEED})")
    parser.add_argument("--workers", **absent, help="games played at once (default: the CPUs this process may use)")


def playing_flags(args) -> tuple[int, int, int]:
    """--episodes, --seed and --workers, with their defaults where not given."""
    return getattr(args, "episodes", EPISODES), getattr(args, "seed", SEED), getattr(args, "workers", usable_cpus())


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="shipped_models", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    ev = sub.add_parser("ship", help="copy a model into trained_models/, evaluate it, write its JSON")
    ev.add_argument("model", help="the checkpoint to ship")
    ev.add_argument("--hardware", required=True, help="where it was trained")
    ev.add_argument("--command", required=True, help="the command that trained it")
    ev.add_argument("--training-seconds", type=float, help="training time (default: the checkpoint's)")
    add_evaluation_flags(ev)
    ev.add_argument("--sittings", help="the run's folder: the sittings its sittings.json lists go in the JSON")
    ep = sub.add_parser("epsilon", help="evaluate a shipped model again with --epsilon; add the games to its JSON")
    ep.add_argument("json", help="the shipped model's JSON (trained_models/<env>.json)")
    ep.add_argument("--epsilon", type=float, default=0.001, help="gym_eval's --epsilon")
    add_evaluation_flags(ep)
    ep.add_argument("--results", help="a gym_eval run's results JSON with this model and --epsilon: its games")
    ep.add_argument("--hardware", help="with --results: the machine that played them")
    tb = sub.add_parser("table", help="print the results table of every trained_models/*.json")
    tb.add_argument("--readme", help="rewrite this README's table in place")
    args = p.parse_args(argv)

    def body() -> int:
        if args.action == "ship":
            sittings = read_sittings(args.sittings, None)["sittings"] if args.sittings else None
            path = ship(args.model)
            data = describe(path, args.hardware, args.command, *playing_flags(args), args.training_seconds, sittings)
            out = os.path.splitext(path)[0] + ".json"
            with atomic_write(out) as f:
                json.dump(data, f, indent=2)
            e = data["evaluation"]
            print(f"{data['env']}: {e['mean']:.2f} ± {e['std']:.2f} over {e['games']} games; wrote {out}")
            return 0
        if args.action == "epsilon":
            if bool(args.results) != bool(args.hardware):
                raise UsageError("--results and --hardware go together: the games played, and the machine they ran on")
            if args.results:
                given = [f"--{name}" for name in PLAYING if hasattr(args, name)]
                if given:
                    raise UsageError(f"{', '.join(given)}: with --results no game is played; leave them out")
                e = import_epsilon_evaluation(args.json, args.results, args.epsilon, args.hardware)
            else:
                e = add_epsilon_evaluation(args.json, args.epsilon, *playing_flags(args))
            summary = f"{e['mean']:.2f} ± {e['std']:.2f} over {e['games']} games"
            print(f"epsilon {e['epsilon']:g}: {summary}; wrote {args.json}")
            return 0
        text = table(shipped())
        if args.readme:
            write_readme(args.readme, text)
        print(text)
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
