"""The models shipped in trained_models/: each loads, fits its env and replays the games its JSON records;
the README's results table is the one the shipped JSON files give."""

import glob
import json
import os
import shutil

import pytest

from api import evaluate
from benchmarks.bench import hardware
from checkpoint import load_checkpoint
from tests.helpers import ROOT, run_cli, run_cli_each

SHIPPED = sorted(glob.glob(os.path.join(ROOT, "trained_models", "*.json")))
REPLAYED = 1  # games replayed per model: the first shorter than LONGEST, else the first ones cut at LONGEST
LONGEST = 10_000  # agent steps: a greedy Breakout game that loops to ALE's limit (27,000) takes minutes, and its
# score stops where the loop begins, long before LONGEST (seed 1 of the shipped model: 428 by step 3,000)
TOLERANCE = 2.0  # points per game: the same seeded game replays exactly on one CPU; another CPU's float
# rounding may flip an argmax somewhere in a game of thousands of steps


def replay_bounds(recorded: dict, saved: dict) -> tuple[float, float]:
    """The scores a replayed game may have. On the machine the JSON was evaluated on (or where it does not say),
    the recorded score within TOLERANCE. Elsewhere an argmax flipped once makes the game play on differently
    (a lost life in Breakout), so the bound is the range of its 100 recorded games, which a model that stopped
    playing well still falls out of."""
    evaluated_on = recorded["evaluated"].get("hardware")
    if evaluated_on is None or evaluated_on == hardware():
        return saved["reward"] - TOLERANCE, saved["reward"] + TOLERANCE
    return recorded["evaluation"]["min"] - TOLERANCE, recorded["evaluation"]["max"] + TOLERANCE


def test_pong_is_shipped():
    assert any(json.load(open(p))["env"] == "PongNoFrameskip-v4" for p in SHIPPED)


@pytest.mark.parametrize("meta", SHIPPED, ids=os.path.basename)
def test_a_shipped_model_scores_what_its_json_says(meta):
    with open(meta) as f:
        recorded = json.load(f)
    path = os.path.join(os.path.dirname(meta), recorded["checkpoint"])
    ckpt = load_checkpoint(path)
    assert ckpt.args["env"] == recorded["env"] and ckpt.frames == recorded["frames"]
    assert recorded["evaluation"]["games"] == len(recorded["games"]) >= 100
    bf16 = recorded["evaluated"].get("bf16", "off")  # replayed as played
    uncut = [g for g in recorded["games"] if g["length"] < LONGEST]
    for saved in (uncut or recorded["games"])[:REPLAYED]:
        game = evaluate(path, recorded["env"], episodes=1, seed=saved["seed"], bf16=bf16, max_episode_length=LONGEST)
        played = game["games"][0]
        low, high = replay_bounds(recorded, saved)
        assert played["seed"] == saved["seed"]
        assert low <= played["reward"] <= high, (played, saved, low, high)


def test_the_readme_table_is_generated_from_the_shipped_json():
    result = run_cli("-m", "benchmarks.shipped_models", "table")
    assert result.returncode == 0, result.stderr
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    block = readme.split("<!-- results:begin -->\n", 1)[1].split("\n<!-- results:end -->", 1)[0]
    assert block == result.stdout.strip()
    assert block.count("\n") == 1 + len(SHIPPED)


def test_a_rare_random_action_ends_the_loop_a_greedy_breakout_game_falls_into():
    """A greedy game of the shipped Breakout model that loops to ALE's limit (its JSON), played again with
    --epsilon 0.001 (a random action in a thousand), ends, all lives lost, long before, as it did in the JSON's
    epsilon evaluation: the first game that did so there."""
    with open(os.path.join(ROOT, "trained_models", "BreakoutNoFrameskip-v4.json")) as f:
        recorded = json.load(f)
    looped = {g["seed"] for g in recorded["games"] if g["length"] > 25_000}
    epsilon_games = recorded["epsilon_evaluation"]["played"]
    seed = next((g["seed"] for g in epsilon_games if g["seed"] in looped and g["length"] < LONGEST / 2), None)
    assert seed is not None, "no greedy game that loops ended early with --epsilon in the JSON"
    path = os.path.join(ROOT, "trained_models", recorded["checkpoint"])
    env = recorded["env"]
    game = evaluate(path, env, episodes=1, seed=seed, epsilon=0.001, max_episode_length=LONGEST, bf16="off")["games"][0]
    assert game["length"] < LONGEST / 2 and game["reward"] >= recorded["evaluation"]["min"] - 100, game


def test_an_epsilon_evaluation_is_added_to_the_json_and_its_table_row(tmp_path):
    from benchmarks.shipped_models import table

    for suffix in (".dat", ".json"):
        shutil.copy(os.path.join(ROOT, "trained_models", f"PongNoFrameskip-v4{suffix}"), tmp_path)
    meta = tmp_path / "PongNoFrameskip-v4.json"
    before = json.loads(meta.read_text())
    args = (meta, "--epsilon", 0.01, "--episodes", 1, "--workers", 1)
    result = run_cli("-m", "benchmarks.shipped_models", "epsilon", *args, timeout=300)
    assert result.returncode == 0, result.stderr
    after = json.loads(meta.read_text())
    block = after.pop("epsilon_evaluation")
    assert after == before
    assert block["epsilon"] == 0.01 and block["games"] == 1 and -21 <= block["mean"] <= 21 and block["longest"] > 0
    assert [g["reward"] for g in block["played"]] == [block["mean"]] and block["played"][0]["seed"] == 1
    assert f"{block['mean']:.2f} ± 0.00 (ε 0.01)" in table([after | {"epsilon_evaluation": block}])


def test_an_epsilon_evaluation_already_played_is_taken_from_its_results_and_checked(tmp_path):
    for suffix in (".dat", ".json"):
        shutil.copy(os.path.join(ROOT, "trained_models", f"PongNoFrameskip-v4{suffix}"), tmp_path)
    meta, played = tmp_path / "PongNoFrameskip-v4.json", tmp_path / "played.json"
    model, env = str(tmp_path / "PongNoFrameskip-v4.dat"), "PongNoFrameskip-v4"
    results = evaluate(model, env, episodes=1, seed=3, epsilon=0.01, bf16="off", results=str(played))
    other, cut = tmp_path / "other.json", tmp_path / "cut.json"
    other.write_text(json.dumps(json.loads(played.read_text()) | {"trained_frames": 1}))
    cut.write_text(json.dumps(json.loads(played.read_text()) | {"interrupted": True}))
    take = ("benchmarks.shipped_models", "epsilon", meta, "--results")
    refused = run_cli_each(
        "-m",
        [
            (*take, played, "--hardware", "here", "--epsilon", 0.001),  # played with 0.01
            (*take, other, "--hardware", "here", "--epsilon", 0.01),  # another model's games
            (*take, cut, "--hardware", "here", "--epsilon", 0.01),  # not all of them
            (*take, meta, "--hardware", "here", "--epsilon", 0.01),  # not gym_eval's results
            (*take, played, "--epsilon", 0.01),  # where they were played is not said
            (*take, played, "--hardware", "here", "--epsilon", 0.01, "--seed", 7),  # no game is played
        ],
    )
    whys = ("not 0.001", "not the shipped one", "interrupted", "not a gym_eval results JSON", "go together", "--seed")
    for result, why in zip(refused, whys):
        assert result.returncode == 2 and why in result.stderr and len(result.stderr.splitlines()) == 1, result
    before = json.loads(meta.read_text())
    result = run_cli("-m", *take, played, "--hardware", "here", "--epsilon", 0.01)
    assert result.returncode == 0, result.stderr
    after = json.loads(meta.read_text())
    block = after.pop("epsilon_evaluation")
    assert after == before
    game = results["games"][0]
    assert block["games"] == 1 and block["mean"] == game["reward"] and block["longest"] == game["length"]
    assert block["played"] == [{k: game[k] for k in ("seed", "reward", "length")}]
    assert block["evaluated"]["hardware"] == "here" and block["evaluated"]["results"].endswith("played.json")
    assert block["evaluated"]["date"] == results["date"]
