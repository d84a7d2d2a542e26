"""bench.py runs both variants on real Pong, prints the table and ratio, and writes JSON."""

import json
import os

from metrics import read_metrics
from tests.helpers import run_cli


def test_bench_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    args = ("--workers", 1, "--warmup", 1, "--duration", 3, "--rounds", 1, "--phases", "--phase-updates", 2)
    result = run_cli("bench.py", *args, "--json", out, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fast / textbook frames/s:" in result.stdout and "| textbook |" in result.stdout
    data = json.loads(out.read_text())
    for name in ("textbook", "fast"):
        summary = data["summary"][name]
        assert summary["frames_per_s"] > 0 and summary["updates_per_s"] > 0
        assert summary["peak_rss_mb_per_worker"] > 50
        assert sum(data["phases_ms_per_step"][name].values()) > 0
    assert data["ratio"] == data["summary"]["fast"]["frames_per_s"] / data["summary"]["textbook"]["frames_per_s"]


def test_bench_rejects_a_bad_duration_in_one_line():
    result = run_cli("bench.py", "--duration", 0)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--duration" in result.stderr


def test_time_to_score_runs_real_training_per_seed_and_reports_time_and_frames(tmp_path):
    out = tmp_path / "to_score.json"
    args = ("--env", "tests.pixel_envs:Cue-v0", "--workers", 1, "--to-score", 0, "--window", 2, "--seeds", 3, 4)
    result = run_cli(
        "bench.py",
        *args,
        "--max-time",
        120,
        "--train-args",
        "--test-interval 0",
        "--runs-dir",
        tmp_path,
        "--json",
        out,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mean(2) >= 0: median" in result.stdout and "2 of 2 runs" in result.stdout
    data = json.loads(out.read_text())
    assert [run["seed"] for run in data["runs"]] == [3, 4]
    for run in data["runs"]:
        assert run["exit_code"] == 0 and run["games"] >= 2
        assert run["mean"]["games"] == 2 and 0 < run["first_game"]["seconds"] <= run["mean"]["seconds"] < 120
        # the frames reported are those the run had counted at that game (0 if the test process played both
        # games before the worker's first update, as it may on a busy machine)
        rows = read_metrics(os.path.join(run["run_dir"], "tests.pixel_envs_Cue-v0_metrics.csv"))
        assert run["mean"]["frames"] == int(rows[run["mean"]["games"] - 1]["frames"])
    assert data["summary"]["mean"]["frames"]["runs"] == 2


def test_time_to_score_that_is_not_reached_says_so(tmp_path):
    args = ("--env", "tests.pixel_envs:Cue-v0", "--workers", 1, "--to-score", 1000, "--max-time", 6)
    result = run_cli("bench.py", *args, "--runs-dir", tmp_path, "--json", tmp_path / "o.json", timeout=200)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mean(5) >= 1000: reached by no run" in result.stdout
    run = json.loads((tmp_path / "o.json").read_text())["runs"][0]
    assert run["mean"] is None and run["first_game"] is None
