"""bench.py runs both variants on real Pong, prints the table and ratio, and writes JSON."""

import json

from tests.helpers import run_cli


def test_bench_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    args = ("--workers", 1, "--warmup", 1, "--duration", 3, "--rounds", 1, "--phases", "--phase-updates", 2)
    result = run_cli("-m", "benchmarks.bench", *args, "--json", out, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fast / textbook frames/s:" in result.stdout and "| textbook |" in result.stdout
    data = json.loads(out.read_text())
    for name in ("textbook", "fast"):
        summary = data["summary"][name]
        assert summary["frames_per_s"] > 0 and summary["updates_per_s"] > 0
        assert summary["peak_rss_mb_per_worker"] > 50
        assert sum(data["phases_per_step"][name]["ms"].values()) > 0
        assert data["phases_per_step"][name]["ops"]["pull weights"] == 16 / 20  # a copy per parameter per update
        # an update is 20 agent steps of 4 frames on PongNoFrameskip-v4: frames and updates counted alike
        assert abs(summary["frames_per_s"] / summary["updates_per_s"] - 80) < 1e-6
    backward = {name: data["phases_per_step"][name]["ops"]["backward + optimizer"] for name in ("textbook", "fast")}
    assert backward["fast"] < 0.7 * backward["textbook"], backward  # one batched LSTM backward, not 20 cells'
    printed = float(result.stdout.split("fast / textbook frames/s:")[1].split("x")[0])
    assert abs(printed - data["ratio"]) < 0.006 and data["ratio"] > 0


def test_bench_measures_only_the_variants_asked_for_in_each_precision(tmp_path):
    out = tmp_path / "bench.json"
    args = ("--workers", 1, "--warmup", 1, "--duration", 2, "--rounds", 1, "--variants", "fast", "--mps", "on")
    result = run_cli("-m", "benchmarks.bench", *args, "--precisions", "fp32", "bf16", "--json", out, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| fast |" in result.stdout and "| fast bf16 |" in result.stdout and "textbook" not in result.stdout
    assert "--mps on: no two processes share a GPU" in result.stdout
    data = json.loads(out.read_text())
    assert list(data["summary"]) == ["fast", "fast bf16"] and data["ratio"] is None and data["mps"] == "on"
    assert data["precisions"] == ["fp32", "bf16"]


def test_bench_rejects_a_bad_duration_in_one_line():
    result = run_cli("-m", "benchmarks.bench", "--duration", 0)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--duration" in result.stderr
