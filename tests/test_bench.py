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
        assert sum(data["phases_ms_per_step"][name].values()) > 0
    assert data["ratio"] == data["summary"]["fast"]["frames_per_s"] / data["summary"]["textbook"]["frames_per_s"]


def test_bench_rejects_a_bad_duration_in_one_line():
    result = run_cli("-m", "benchmarks.bench", "--duration", 0)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--duration" in result.stderr
