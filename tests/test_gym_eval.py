"""gym_eval.py on real checkpoints and games: results, parallel equality, videos, bad input; the plot command."""

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from api import load_agent
from checkpoint import PREPROCESSING, load_checkpoint
from model import A3Clstm
from tests.helpers import run_cli, run_cli_each

PONG = "PongNoFrameskip-v4"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint and metrics from a few seconds of real training."""
    root = tmp_path_factory.mktemp("trained")
    # stop right after the first test game: a checkpoint, a metrics row and a curve exist then
    flags = ["--workers", 1, "--target-score", -21, "--target-window", 1, "--test-interval", 0]
    dirs = ["--log-dir", root / "logs", "--save-model-dir", root / "models"]
    result = run_cli("main.py", "--env", PONG, *flags, *dirs, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return {"model": root / "models" / f"{PONG}.dat", "metrics": root / "logs" / f"{PONG}_metrics.csv", "root": root}


def evaluate(*args, timeout=300):
    return run_cli("gym_eval.py", "--env", PONG, *args, timeout=timeout)


def test_evaluates_a_trained_checkpoint_and_writes_json(trained, tmp_path):
    out = tmp_path / "eval.json"
    result = evaluate("--model", trained["model"], "--num-episodes", 2, "--results", out)
    assert result.returncode == 0, result.stderr
    assert "game 2/2: reward" in result.stdout and "2 games: mean" in result.stdout and "median" in result.stdout
    data = json.loads(out.read_text())
    assert data["env"] == PONG and data["checkpoint"] == str(trained["model"])
    assert data["trained_frames"] == load_checkpoint(str(trained["model"])).frames > 0
    assert [g["seed"] for g in data["games"]] == [1, 2]
    for game in data["games"]:
        assert -21 <= game["reward"] <= 21 and game["length"] > 100
    assert data["summary"]["games"] == 2 and {"mean", "std", "min", "max", "median", "wall_time"} <= set(
        data["summary"]
    )


def test_parallel_results_equal_serial_ones(trained, tmp_path):
    common = ["--model", trained["model"], "--num-episodes", 2, "--stochastic", "--seed", 7]
    serial, parallel = tmp_path / "serial.json", tmp_path / "parallel.json"
    assert evaluate(*common, "--results", serial).returncode == 0
    assert evaluate(*common, "--workers", 2, "--results", parallel).returncode == 0
    strip = lambda path: [(g["seed"], g["reward"], g["length"]) for g in json.loads(path.read_text())["games"]]  # noqa: E731
    assert strip(serial) == strip(parallel)
    assert len({length for _, _, length in strip(serial)}) > 1


def test_bare_classic_state_dict_evaluates(tmp_path):
    path = tmp_path / f"{PONG}.dat"
    torch.save(A3Clstm(1, 6).state_dict(), path)
    result = evaluate("--load-model-dir", tmp_path, "--num-episodes", 1, "--results", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "r.json").read_text())["trained_frames"] == 0


def test_checkpoint_of_another_preprocessing_is_scored_with_one_warning_line(trained, tmp_path):
    current = evaluate("--model", trained["model"], "--num-episodes", 1, "--results", tmp_path / "now.json")
    assert current.returncode == 0 and "warning" not in current.stderr
    assert json.loads((tmp_path / "now.json").read_text())["preprocessing"] == PREPROCESSING
    for recorded, words in ((None, "before it matched rl_a3c_pytorch"), ("my-own", "preprocessing 'my-own'")):
        saved = torch.load(trained["model"], weights_only=True)
        saved["preprocessing"] = recorded
        if recorded is None:
            del saved["preprocessing"]
        old = tmp_path / "old.dat"
        torch.save(saved, old)
        result = evaluate("--model", old, "--num-episodes", 1, "--results", tmp_path / "old.json")
        assert result.returncode == 0, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("warning:") and words in lines[0], result.stderr
        assert json.loads((tmp_path / "old.json").read_text())["preprocessing"] == recorded


def test_exported_classic_state_dict_plays_exactly_as_the_checkpoint(trained, tmp_path):
    """A model goes to the classic tool as a bare state_dict; read back here it plays the same games."""
    exported = tmp_path / "classic.dat"
    assert run_cli("checkpoint.py", "export", trained["model"], exported).returncode == 0
    games = {}
    for name, path in (("checkpoint", trained["model"]), ("exported", exported)):
        out = tmp_path / f"{name}.json"
        result = evaluate("--model", path, "--num-episodes", 2, "--stochastic", "--seed", 5, "--results", out)
        assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
        games[name] = [(g["reward"], g["length"]) for g in json.loads(out.read_text())["games"]]
    assert games["exported"] == games["checkpoint"]


def test_records_mp4_and_gif(trained, tmp_path):
    videos = tmp_path / "videos"
    result = evaluate(
        "--model", trained["model"], "--num-episodes", 1, "--record", videos, "--gif", "--results", tmp_path / "r.json"
    )
    assert result.returncode == 0, result.stderr
    game = json.loads((tmp_path / "r.json").read_text())["games"][0]
    capture = cv2.VideoCapture(str(videos / f"{PONG}_game0000.mp4"))
    count = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        assert frame.shape == (210, 160, 3)
        count += 1
    assert count == game["length"] + 1
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(15.0)
    with Image.open(videos / f"{PONG}_game0000.gif") as gif:
        durations = []
        for i in range(gif.n_frames):  # identical neighbours are merged into one longer frame
            gif.seek(i)
            durations.append(gif.info["duration"])
    assert abs(sum(durations) - (game["length"] + 1) * 1000 / 15) <= 10


def test_a_recorded_game_ends_on_its_own_last_screen(trained):
    player = load_agent(str(trained["model"]), seed=1)
    game = player.play(record=True)
    next_first = player.env.render()  # the env was reset in the game's last step: the next game's first screen
    player.close()
    assert len(game["frames"]) == game["length"] + 1
    score = slice(0, 34)  # Pong's score: 21 for one side at the end, 0 and 0 at the start
    assert not np.array_equal(game["frames"][-1][score], next_first[score])
    assert np.array_equal(game["frames"][0][score], next_first[score])


def test_a_game_played_unrecorded_renders_no_screen(trained):
    player = load_agent(str(trained["model"]), seed=1)
    unrecorded = player.play()
    screen = player.env.get_wrapper_attr("screen")
    recorded = player.play(record=True)
    player.close()
    assert unrecorded["frames"] == [] and screen is None
    assert len(recorded["frames"]) == recorded["length"] + 1


def test_record_every_n_games(trained, tmp_path):
    videos = tmp_path / "videos"
    result = evaluate(
        "--model",
        trained["model"],
        "--num-episodes",
        3,
        "--record",
        videos,
        "--record-every",
        2,
        "--results",
        tmp_path / "r.json",
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in videos.iterdir()) == [f"{PONG}_game0000.mp4", f"{PONG}_game0002.mp4"]


def bad_input_cases(trained, tmp_path):
    corrupt = tmp_path / "corrupt.dat"
    corrupt.write_bytes(b"\x00not a checkpoint" * 100)
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(trained["model"].read_bytes()[:5000])
    saved = torch.load(trained["model"], weights_only=True)
    extra, missing = tmp_path / "extra.dat", tmp_path / "missing_key.dat"
    torch.save({**saved, "schedule": "cosine"}, extra)
    torch.save({k: v for k, v in saved.items() if k != "model"}, missing)
    return [
        (["--model", extra], "entries this toolkit does not know (schedule)"),
        (["--model", missing], "has no model weights"),
        (["--model", tmp_path / "missing.dat"], "no checkpoint at"),
        (["--load-model-dir", tmp_path / "empty"], "no checkpoint at"),
        (["--model", trained["model"], "--env", "BreakoutNoFrameskip-v4"], "trained for 6 actions"),
        (["--model", trained["model"], "--hidden-size", 256], "hidden size 512"),
        (["--model", corrupt], "corrupt or truncated"),
        (["--model", truncated], "corrupt or truncated"),
        (["--model", trained["model"], "--env", "PongNoFrameskip-v9"], "unknown env id"),
        (["--model", trained["model"], "--num-episodes", 0], "--num-episodes must be at least 1"),
        (["--model", trained["model"], "--gpu-id", 7], "GPU id 7 does not exist"),
        (["--model", trained["model"], "--epsilon", -0.1], "--epsilon is a probability"),
    ]


def test_bad_input_is_one_clear_line(trained, tmp_path):
    cases = bad_input_cases(trained, tmp_path)
    results = run_cli_each("gym_eval.py", [["--env", PONG, *args] for args, _ in cases], timeout=60)
    for (args, words), result in zip(cases, results):
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], (args, result.stderr)


def test_render_without_display_says_so(trained, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = evaluate("--model", trained["model"], "--render", timeout=60)
    assert result.returncode == 2 and "needs a display" in result.stderr


def test_training_draws_curves_and_plot_command_overlays_runs(trained, tmp_path):
    assert (trained["root"] / "logs" / f"{PONG}.png").stat().st_size > 10_000
    second = tmp_path / "other_metrics.csv"
    second.write_text(trained["metrics"].read_text())
    out = tmp_path / "compare.png"
    result = run_cli("metrics.py", "plot", trained["metrics"], second, "-o", out)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 800
    missing = run_cli("metrics.py", "plot", tmp_path / "nope.csv")
    assert missing.returncode == 2 and "no metrics file" in missing.stderr
