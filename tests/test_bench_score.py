"""benchmarks/bench_score.py: real training runs per seed and variant, timed from launch to milestones and the score."""

import json
import os
import signal

from metrics import first_reaching, read_metrics
from proctree import alive, descendants
from tests.helpers import run_cli, start_cli, wait_for

CUE = ("--env", "tests.pixel_envs:Cue-v0", "--workers", 1)


def test_first_reaching_is_the_first_window_whose_mean_reaches_the_score():
    rows = [{"reward": r, "since_launch": 10.0 * i, "frames": 100 * i} for i, r in enumerate([-21, 5, 19, 17, 20])]
    assert first_reaching(rows, 18, 1) == {"seconds": 20.0, "frames": 200, "games": 3}
    assert first_reaching(rows, 18.5, 2) == {"seconds": 40.0, "frames": 400, "games": 5}  # (17 + 20) / 2
    assert first_reaching(rows, 10, 3) == {"seconds": 30.0, "frames": 300, "games": 4}  # (5 + 19 + 17) / 3
    assert first_reaching(rows, 19, 2) is None
    assert first_reaching(rows[:1], -30, 2) is None  # fewer games than the window


def test_a_run_that_does_not_reach_a_score_counts_as_slower_and_one_stopped_early_not_at_all():
    from types import SimpleNamespace

    from benchmarks.bench_score import spread, summarise

    hit = {"seconds": 600.0, "frames": 1000}
    assert spread([hit, None], "seconds") == {"median": None, "min": 600.0, "max": None, "runs": 1}
    assert spread([{"seconds": 900.0}, None, hit], "seconds") == {"median": 900.0, "min": 600.0, "max": None, "runs": 2}
    assert spread([None], "frames") is None

    def run(reached: bool, interrupted: bool) -> dict:
        got = hit if reached else None
        return {"variant": "v", "first_game": got, "mean": got, "milestones": {"0.0": got}, "interrupted": interrupted}

    summary = summarise([run(True, False), run(False, False), run(False, True)], SimpleNamespace(milestones=[0.0]))
    for key in ("first_game", "mean", "milestone 0.0"):
        assert summary["v"][key]["of"] == 2 and summary["v"][key]["seconds"]["median"] is None
    stopped_after = summarise([run(True, False), run(True, True)], SimpleNamespace(milestones=[]))
    assert stopped_after["v"]["mean"]["of"] == 2 and stopped_after["v"]["mean"]["frames"]["median"] == 1000


def test_variants_run_side_by_side_and_report_milestones_time_and_frames(tmp_path):
    out = tmp_path / "score.json"
    variants = ("--test-interval 0", "--test-interval 0 --lr 2e-4")
    args = (*CUE, "--score", 0, "--window", 2, "--milestones", -1, "--seeds", 3, "--max-time", 120)
    result = run_cli(
        "-m",
        "benchmarks.bench_score",
        *args,
        "--train-args",
        *variants,
        "--runs-dir",
        tmp_path,
        "--json",
        out,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for variant in variants:
        for score in (0, -1):
            assert f"{variant}: mean(2) >= {score}: median" in result.stdout
    data = json.loads(out.read_text())
    assert [(run["variant"], run["seed"]) for run in data["runs"]] == [(v, 3) for v in variants]
    for run in data["runs"]:
        assert run["exit_code"] == 0 and run["games"] >= 2
        assert run["mean"]["games"] == 2 and 0 < run["first_game"]["seconds"] <= run["mean"]["seconds"] < 120
        assert run["milestones"]["-1.0"] == run["mean"]  # a mean >= 0 is >= -1 at the same game
        # the frames reported are those the run had counted at that game (0 if the test process played both
        # games before the worker's first update, as it may on a busy machine)
        rows = read_metrics(os.path.join(run["run_dir"], "tests.pixel_envs_Cue-v0_metrics.csv"))
        assert run["mean"]["frames"] == int(rows[run["mean"]["games"] - 1]["frames"])
        assert run["frames"] == int(rows[-1]["frames"])
    assert set(data["summary"]) == set(variants)
    assert data["summary"][variants[1]]["mean"]["frames"]["runs"] == 1


def test_a_score_that_is_not_reached_says_so(tmp_path):
    args = (*CUE, "--score", 1000, "--max-time", 6, "--train-args=--test-stochastic")  # a lone flag, as it must be
    result = run_cli(
        "-m", "benchmarks.bench_score", *args, "--runs-dir", tmp_path, "--json", tmp_path / "o.json", timeout=200
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--test-stochastic: mean(5) >= 1000: reached by no run" in result.stdout
    run = json.loads((tmp_path / "o.json").read_text())["runs"][0]
    assert run["mean"] is None and run["first_game"] is None


def test_bad_variant_flags_and_milestones_are_one_line_before_any_run(tmp_path):
    for extra, expected in (
        (("--train-args", "", "--lr 2e-4 --bogus 1"), "--bogus"),
        (("--train-args", "--workers 0"), "--workers"),
        (("--train-args", "--test-stochastic"), "--train-args=--test-stochastic"),
        (("--milestones", 0, 20), "--milestones"),
    ):
        result = run_cli("-m", "benchmarks.bench_score", *CUE, "--score", 18, *extra, "--runs-dir", tmp_path / "runs")
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.strip().count("\n") == 0 and expected in result.stderr, result.stderr
        assert not (tmp_path / "runs").exists()


def test_sigterm_to_the_benchmark_alone_stops_its_training_run_and_reports(tmp_path):
    out = tmp_path / "o.json"
    args = (*CUE, "--score", 1000, "--max-time", 300, "--runs-dir", tmp_path, "--json", out)
    bench = start_cli("-m", "benchmarks.bench_score", *args)
    training = []
    try:
        assert wait_for(lambda: any(tmp_path.glob("to-score-*/variant0_seed1/*_metrics.csv")), 120)  # a game
        training = descendants(bench.pid)
        bench.send_signal(signal.SIGTERM)  # to the benchmark only, as `kill` does: not to its process group
        output, _ = bench.communicate(timeout=120)
        assert bench.returncode == 0, output
        assert "interrupted: reporting the runs so far" in output and "reached by no run" in output
        assert wait_for(lambda: not [pid for pid in training if alive(pid)], 30)
    finally:
        for pid in filter(alive, [bench.pid, *training]):
            os.kill(pid, signal.SIGKILL)
    run = json.loads(out.read_text())["runs"][0]
    assert run["interrupted"] and run["exit_code"] == 0 and run["games"] >= 1 and run["seconds"] < 200


def test_resume_keeps_the_finished_runs_and_trains_only_the_missing_ones_on_the_same_settings(tmp_path):
    out = tmp_path / "o.json"
    args = (*CUE, "--score", 1000, "--max-time", 5, "--runs-dir", tmp_path, "--json", out)
    first = run_cli("-m", "benchmarks.bench_score", *args, "--seeds", 1, timeout=200)
    assert first.returncode == 0, first.stdout + first.stderr
    seed1 = json.loads(out.read_text())["runs"]
    assert [run["seed"] for run in seed1] == [1]

    resumed = run_cli("-m", "benchmarks.bench_score", *args, "--seeds", 1, 2, "--resume", timeout=200)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed 1 finished runs from {out}" in resumed.stdout
    data = json.loads(out.read_text())
    assert [run["seed"] for run in data["runs"]] == [1, 2] and data["runs"][0] == seed1[0]
    assert data["summary"]["defaults"]["mean"]["of"] == 2
    assert "native bf16" in data["hardware"]

    for key, value in (("score", 999.0), ("hardware", "another CPU, 2 cores, torch 2.13.0")):
        out.write_text(json.dumps({**data, key: value}))
        refused = run_cli("-m", "benchmarks.bench_score", *args, "--seeds", 3, "--resume", timeout=60)
        assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr
        assert f"--resume: {out} holds runs with {key}" in refused.stderr
        assert json.loads(out.read_text())[key] == value  # untouched: nothing ran
