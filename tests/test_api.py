"""The Python API runs the command lines' code: train, evaluate and load_agent on a small real task."""

import signal
import subprocess
import sys

import pytest
import torch

import evaluation
from api import evaluate, load_agent, train
from settings import Config
from tests.helpers import ROOT, run_cli
from utils import UsageError

CUE = "tests.pixel_envs:Cue-v0"


def test_importing_the_api_starts_no_process_and_writes_no_file(tmp_path):
    code = (
        "import os, sys; sys.path.insert(0, sys.argv[1]); import api, multiprocessing as mp; "
        "assert not mp.active_children(); print(sorted(os.listdir('.')))"
    )
    result = subprocess.run([sys.executable, "-c", code, ROOT], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_train_evaluate_and_play_from_python(tmp_path):
    cfg = Config(
        env=CUE,
        workers=1,
        max_steps=1000,
        test_interval=0,
        progress_interval=1,
        log_dir=str(tmp_path / "logs"),
        save_model_dir=str(tmp_path / "models"),
        load_model_dir=str(tmp_path / "models"),
    )
    handler = signal.getsignal(signal.SIGINT)
    run = train(cfg)
    assert signal.getsignal(signal.SIGINT) is handler, "train() gives the previous signal handlers back"
    assert run.exit_code == 0 and "max-steps" in run.stop_reason
    assert run.frames >= 1000 and run.updates > 0 and run.metrics
    assert {"frames", "reward", "length"} <= set(run.metrics[0])

    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    results = evaluate(run.checkpoint, CUE, episodes=2, seed=3)
    assert torch.get_num_threads() == threads, "evaluate leaves the caller's thread count as it was"
    assert torch.equal(torch.get_rng_state(), rng), "and its random state"
    assert evaluation._pool_player is None, "and keeps no model in the module"
    assert [g["seed"] for g in results["games"]] == [3, 4] and results["summary"]["games"] == 2
    assert not (tmp_path / "logs" / f"{CUE}_eval.json").exists(), "no results file unless asked for"

    player = load_agent(run.checkpoint)
    game = player.play(record=True)
    player.close()
    assert game["length"] == 20 and len(game["frames"]) == 21 and game["frames"][0].shape == (80, 80, 3)

    resumed = train(Config(**{**cfg.__dict__, "load": True, "max_steps": run.frames + 400}))
    assert resumed.exit_code == 0 and resumed.frames >= run.frames + 400
    assert "resumed from" in (tmp_path / "logs" / f"{CUE.replace(':', '_')}_log").read_text()


def test_bad_input_raises_the_line_the_command_line_prints(tmp_path):
    with pytest.raises(UsageError) as raised:
        train(Config(env=CUE, workers=0, log_dir=str(tmp_path)))
    cli = run_cli("main.py", "--env", CUE, "--workers", 0, "--log-dir", tmp_path)
    assert cli.returncode == 2 and cli.stderr.strip() == f"error: {raised.value}"
    with pytest.raises(UsageError, match="no checkpoint at"):
        evaluate(str(tmp_path / "missing.dat"), CUE, episodes=1)
    with pytest.raises(UsageError, match="no checkpoint at"):
        load_agent(str(tmp_path / "missing.dat"))


def test_the_toolkit_works_from_any_folder_with_the_standard_library_first_on_the_path(tmp_path):
    """A notebook elsewhere appends the toolkit to sys.path: Python's own `test` package then comes first,
    and config.json is not in the working folder; main.py run by its path from another folder, likewise."""
    code = (
        "import sys; sys.path.append(sys.argv[1]); from api import train; from settings import Config; "
        "r = train(Config(env='PongNoFrameskip-v4', workers=1, max_steps=400, progress_interval=1, "
        "log_dir='logs', save_model_dir='models')); print('exit', r.exit_code, r.frames >= 400)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, ROOT], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0 and "exit 0 True" in result.stdout, result.stdout + result.stderr
    assert (tmp_path / "models" / "PongNoFrameskip-v4.dat").exists()
    cli = run_cli(f"{ROOT}/main.py", "--workers", 1, "--max-steps", 400, cwd=tmp_path, timeout=180)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert (tmp_path / "trained_models" / "PongNoFrameskip-v4.dat").exists()
