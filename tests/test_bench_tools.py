"""The smaller tools of benchmarks/: push_cost.py, eval_norm.py, sittings.py and bf16_grads.py, run for real on small
inputs."""

import json
import re

import torch

from api import evaluate
from checkpoint import PREPROCESSING, Checkpoint, save_checkpoint
from model import A3Clstm
from tests.helpers import run_cli

CUE = "tests.pixel_envs:Cue-v0"


def test_push_cost_times_the_copy_the_alias_and_a_whole_update():
    result = run_cli("-m", "benchmarks.push_cost", "--calls", 5, "--updates", 2, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(
        r"by copy ([\d.]+) ms, by alias ([\d.]+) ms; one update ([\d.]+) ms; the copy is ([\d.]+)% of an update",
        result.stdout,
    )
    assert found, result.stdout
    copy, alias, update, share = map(float, found.groups())
    assert 0 < alias < copy < update
    assert abs(share - copy / update * 100) < 0.06


def test_eval_norm_plays_both_ways_from_the_same_first_game(tmp_path):
    from benchmarks.eval_norm import measure

    torch.manual_seed(0)
    path = tmp_path / "cue.dat"
    model = A3Clstm(1, 2, 32).state_dict()
    save_checkpoint(str(path), Checkpoint(model=model, args={"env": CUE}, preprocessing=PREPROCESSING))
    result = measure(str(path), None, games=3, seed=1, workers=1)
    assert result["env"] == CUE and len(result["fresh"]) == len(result["carried"]) == 3
    assert result["fresh"][0] == result["carried"][0]
    assert all(0 <= r <= 20 for r in result["fresh"] + result["carried"])

    printed = run_cli("-m", "benchmarks.eval_norm", path, "--games", 2, "--workers", 1)
    assert printed.returncode == 0, printed.stdout + printed.stderr
    assert "| fresh per game (gym_eval) |" in printed.stdout and "| carried across games" in printed.stdout
    refused = run_cli("-m", "benchmarks.eval_norm", path, "--games", 1)
    assert refused.returncode == 2 and refused.stderr.strip() == "error: --games must be at least 2"


def test_eval_norm_takes_the_fresh_games_from_a_results_file_of_the_same_model(tmp_path):
    from benchmarks.eval_norm import measure

    torch.manual_seed(0)
    path = tmp_path / "cue.dat"
    model = A3Clstm(1, 2, 32).state_dict()
    save_checkpoint(str(path), Checkpoint(model=model, args={"env": CUE}, frames=7, preprocessing=PREPROCESSING))
    played = evaluate(str(path), CUE, episodes=3, seed=1, workers=1, results=str(tmp_path / "played.json"))
    result = measure(str(path), None, games=2, seed=2, workers=1, fresh_results=str(tmp_path / "played.json"))
    assert result["fresh"] == [g["reward"] for g in played["games"][1:]]

    uncovered = run_cli("-m", "benchmarks.eval_norm", path, "--seed", 3, "--fresh-results", tmp_path / "played.json")
    assert uncovered.returncode == 2 and "has no game with seed 4" in uncovered.stderr
    save_checkpoint(str(path), Checkpoint(model=model, args={"env": CUE}, frames=8, preprocessing=PREPROCESSING))
    other = run_cli("-m", "benchmarks.eval_norm", path, "--games", 2, "--fresh-results", tmp_path / "played.json")
    assert other.returncode == 2 and "a checkpoint of 7 frames" in other.stderr


def test_sittings_record_each_sitting_of_a_run_continued_with_load(tmp_path):
    run_dir = tmp_path / "run"
    flags = ("--env", CUE, "--workers", 1, "--test-interval", 0)
    flags += ("--log-dir", run_dir, "--save-model-dir", run_dir, "--load-model-dir", run_dir)
    record = ("-m", "benchmarks.sittings", "record", run_dir, "--hardware", "this machine")
    curve = tmp_path / "curve.png"
    for sitting, extra in enumerate((("--max-steps", 600), ("--load", "--max-steps", 1200))):
        trained = run_cli("main.py", *flags, *extra, timeout=120)
        assert trained.returncode == 0, trained.stdout + trained.stderr
        command = f"python main.py {' '.join(map(str, extra))}"
        result = run_cli(*record, "--command", command, "--env", CUE, "--curve", curve)
        assert result.returncode == 0 and "recorded in" in result.stdout, result.stdout + result.stderr
        entries = json.loads((run_dir / "sittings.json").read_text())["sittings"]
        assert len(entries) == sitting + 1 and entries[-1]["command"] == command
        assert curve.stat().st_size > 0
    first, second = entries
    assert first["frames"][0] == 0 and second["frames"][0] == first["frames"][1] < second["frames"][1]
    assert first["training_seconds"][1] == second["training_seconds"][0] < second["training_seconds"][1]
    assert 0 < first["test_games"] <= second["test_games"]

    again = run_cli(*record, "--command", "python main.py")  # no training since: refused in one line
    assert again.returncode == 2 and "train a sitting first" in again.stderr and again.stderr.count("\n") == 1
    assert len(json.loads((run_dir / "sittings.json").read_text())["sittings"]) == 2


def test_bf16_grads_compares_the_two_precisions_on_the_same_pong_rollouts():
    result = run_cli("-m", "benchmarks.bf16_grads", "--rollouts", 3, "--warmup", 1, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for part in ("convolutions", "LSTM", "heads"):
        found = re.search(rf"\| {part} \| ([-\d.]+) \(.*?\) \| ([-\d.]+) \(.*?\) \| ([-\d.]+) \(", result.stdout)
        assert found, result.stdout
        agreement, error, between_rollouts = map(float, found.groups())
        assert 0.9 < agreement <= 1 and 0 < error < 0.5, result.stdout  # bf16 differs from fp32, a little
        assert between_rollouts < agreement  # consecutive rollouts differ more than the precisions do
    kl = re.search(
        r"policy KL\(fp32 \|\| bf16\) per step: mean ([\d.e+-]+), max ([\d.e+-]+) \((\d+) steps\)", result.stdout
    )
    assert kl and 0 < float(kl[1]) <= float(kl[2]) and int(kl[3]) == 3 * 20, result.stdout


def test_bf16_grads_refuses_bad_input_in_one_line(tmp_path):
    for args in (("--rollouts", 1), ("--checkpoint", tmp_path / "none.dat")):
        result = run_cli("-m", "benchmarks.bf16_grads", *args)
        assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
