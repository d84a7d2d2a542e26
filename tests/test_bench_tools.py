"""The smaller measurement scripts of benchmarks/: push_cost.py and eval_norm.py, run for real on small inputs."""

import re

import torch

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
