"""Faults, signals and bad input, driving the real main.py: kill -9 of real processes, real signals."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from metrics import read_metrics, read_progress
from proctree import alive, descendants, find_titled
from settings import Config
from tests.helpers import ROOT, run_cli, run_cli_each, start_cli, wait_for

CUE = "tests.pixel_envs:Cue-v0"


def log_of(run_dirs, env=CUE):
    path = run_dirs["logs"] / f"{env.replace(':', '_')}_log"
    return path.read_text() if path.exists() else ""


def has_trained(run_dirs, env=CUE):
    progress = read_progress(str(run_dirs["logs"] / f"{env.replace(':', '_')}_progress.jsonl"))
    return any(p["updates"] > 0 for p in progress)


def launch(run_dirs, *args, env=CUE):
    return start_cli(
        "main.py",
        "--env",
        env,
        "--workers",
        2,
        "--progress-interval",
        1,
        "--test-interval",
        1,
        *run_dirs["flags"],
        *args,
    )


def finish(proc, signum=signal.SIGINT, timeout=30):
    """Send `signum` to the whole process group, as a terminal's Ctrl-C does; return (exit code, output)."""
    children = descendants(proc.pid)
    if signum is not None:
        os.killpg(proc.pid, signum)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert wait_for(lambda: not any(alive(pid) for pid in children), 5), "processes left behind"
    return proc.returncode, out


def checkpoint(run_dirs, env=CUE):
    return load_checkpoint(str(run_dirs["models"] / f"{env.replace(':', '_')}.dat"))


@pytest.mark.parametrize("title, name", [("a3c train 1", "train1"), ("a3c test", "test")])
def test_killed_process_is_restarted(run_dirs, title, name):
    proc = launch(run_dirs)
    assert wait_for(lambda: find_titled(proc.pid, title) and has_trained(run_dirs), 60)
    os.kill(find_titled(proc.pid, title)[0], signal.SIGKILL)
    assert wait_for(lambda: f"{name} died (killed by SIGKILL); restart 1 of 3" in log_of(run_dirs), 10)
    assert wait_for(lambda: len(find_titled(proc.pid, title)) == 1, 30), "no replacement started"
    assert wait_for(lambda: "Time 00h" in log_of(run_dirs), 30)
    assert wait_for(lambda: log_of(run_dirs).count(f"{name} started on cpu with seed") == 2, 30)
    seeds = re.findall(rf"{name} started on cpu with seed (\d+)", log_of(run_dirs))
    assert seeds[0] != seeds[1], "the replacement replays its predecessor's games"
    code, out = finish(proc)
    assert code == 0, out
    assert checkpoint(run_dirs).updates > 0


def test_past_max_restarts_the_run_stops_cleanly_with_a_checkpoint(run_dirs):
    proc = launch(run_dirs, "--max-restarts", 0)
    assert wait_for(lambda: find_titled(proc.pid, "a3c train 0") and has_trained(run_dirs), 60)
    os.kill(find_titled(proc.pid, "a3c train 0")[0], signal.SIGKILL)
    code, out = finish(proc, signum=None)
    assert code == 1, out
    assert "train0 died (killed by SIGKILL) more than --max-restarts 0 times" in out
    assert "saved" in out and checkpoint(run_dirs).frames > 0


def test_worker_exception_is_logged_with_rank_and_restarted(run_dirs):
    # A frame that the model cannot take: the real worker raises inside its loop.
    proc = launch(run_dirs, "--max-restarts", 1, "--env-config", "config.json", env="tests.pixel_envs:BadFrame-v0")
    code, out = finish(proc, signum=None, timeout=90)
    assert code == 1, out
    assert "worker 0 died" in out and "Traceback" in log_of(run_dirs, "tests.pixel_envs:BadFrame-v0")
    assert "restart 1 of 1" in out and "more than --max-restarts 1 times" in out


def test_persistent_nan_stops_the_run_and_keeps_a_finite_checkpoint(run_dirs):
    proc = launch(run_dirs, "--max-nan-updates", 20, env="tests.pixel_envs:NanReward-v0")
    code, out = finish(proc, signum=None, timeout=120)
    assert code == 1, out
    assert "20 non-finite updates in a row" in out and "dropped updates" in out
    ckpt = checkpoint(run_dirs, "tests.pixel_envs:NanReward-v0")
    assert ckpt.updates == 0 and all(torch.isfinite(v).all() for v in ckpt.model.values())


def test_failed_save_is_reported_and_the_run_goes_on(run_dirs):
    proc = launch(run_dirs)
    models = run_dirs["models"]
    assert wait_for(lambda: (models / "tests.pixel_envs_Cue-v0.dat").exists(), 60)
    for path in models.iterdir():
        path.unlink()
    models.rmdir()
    models.write_text("a file where the directory was")
    assert wait_for(lambda: "could not save" in log_of(run_dirs), 30)
    assert "the previous checkpoint is intact" in log_of(run_dirs)
    lines = log_of(run_dirs).count("Time 00h")
    assert wait_for(lambda: log_of(run_dirs).count("Time 00h") > lines + 1, 30), "training stopped"
    code, out = finish(proc)
    assert code == 1 and "could not save" in out


def test_interrupted_save_leaves_the_last_good_checkpoint(tmp_path):
    """A real ENOSPC-like failure: a file-size limit makes the write fail half way through."""
    path = tmp_path / "model.dat"
    good = Checkpoint(model=_weights(2, 8), frames=7)
    save_checkpoint(str(path), good)
    before = path.read_bytes()
    script = (
        "import resource, signal, sys, torch\n"
        "from checkpoint import Checkpoint, save_checkpoint\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
        "try:\n"
        f"    save_checkpoint({str(path)!r}, Checkpoint(model={{'conv1.weight': torch.zeros(1_000_000)}}))\n"
        "except OSError as e:\n"
        "    print('failed', e.errno)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("failed"), result.stdout + result.stderr
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.dat"], "no temp file left behind"
    assert load_checkpoint(str(path)).frames == 7


@pytest.mark.parametrize("signals", [[signal.SIGINT, signal.SIGINT], [signal.SIGHUP], [signal.SIGTERM]])
def test_stop_signals_and_ctrl_c_twice(run_dirs, signals):
    proc = launch(run_dirs)
    assert wait_for(lambda: has_trained(run_dirs), 60)
    for signum in signals[:-1]:
        os.killpg(proc.pid, signum)
        time.sleep(0.3)
    code, out = finish(proc, signals[-1])
    assert code == 0, out
    assert "Traceback" not in out and "saved" in out
    assert checkpoint(run_dirs).frames > 0


def test_ctrl_c_during_start_up(run_dirs):
    proc = launch(run_dirs)
    assert wait_for(lambda: "training tests.pixel_envs:Cue-v0" in log_of(run_dirs), 30)
    code, out = finish(proc, signal.SIGINT)
    assert code == 0, out
    assert "Traceback" not in out and "saved" in out
    checkpoint(run_dirs)


def test_fresh_run_keeps_the_earlier_run_and_starts_its_own_metrics_while_load_continues_them(run_dirs):
    name = "tests.pixel_envs_Cue-v0"
    common = ["--env", CUE, "--workers", 1, "--test-interval", 0, *run_dirs["flags"]]
    metrics = run_dirs["logs"] / f"{name}_metrics.csv"
    assert run_cli("main.py", *common, "--max-steps", 800).returncode == 0
    first = (run_dirs["models"] / f"{name}.dat").read_bytes()
    first_rows = read_metrics(str(metrics))
    assert run_cli("main.py", *common, "--max-steps", 800).returncode == 0
    kept = sorted(p.name for p in run_dirs["models"].iterdir() if p.name.startswith(f"{name}.2"))
    assert len(kept) == 1 and (run_dirs["models"] / kept[0]).read_bytes() == first
    stamp = kept[0].removeprefix(f"{name}.").removesuffix(".dat")
    assert read_metrics(str(run_dirs["logs"] / f"{name}_metrics.csv.{stamp}")) == first_rows
    assert (run_dirs["logs"] / f"{name}_log.{stamp}").exists()
    fresh = read_metrics(str(metrics))
    assert fresh[0]["frames"] < first_rows[-1]["frames"] and fresh[0]["elapsed"] < first_rows[-1]["elapsed"]
    assert "resumed from" not in (run_dirs["logs"] / f"{name}_log").read_text()

    trained = load_checkpoint(str(run_dirs["models"] / f"{name}.dat"))
    assert trained.elapsed > 0
    assert run_cli("main.py", *common, "--load", "--max-steps", trained.frames + 800).returncode == 0
    resumed = read_metrics(str(metrics))
    assert resumed[: len(fresh)] == fresh, "--load appends to the run's metrics"
    new = resumed[len(fresh) :]
    assert new and new[0]["frames"] >= trained.frames and new[0]["elapsed"] > trained.elapsed
    assert load_checkpoint(str(run_dirs["models"] / f"{name}.dat")).elapsed > trained.elapsed


def test_workers_and_the_test_process_exit_when_the_launcher_is_killed(run_dirs):
    proc = launch(run_dirs)
    assert wait_for(lambda: find_titled(proc.pid, "a3c test") and has_trained(run_dirs), 60), log_of(run_dirs)
    children = [pid for title in ("a3c train 0", "a3c train 1", "a3c test") for pid in find_titled(proc.pid, title)]
    assert len(children) == 3
    proc.kill()  # SIGKILL to the launcher alone: nothing of it runs to stop the others
    proc.communicate(timeout=10)
    assert wait_for(lambda: not any(alive(pid) for pid in children), 30), "processes outlived their launcher"


def test_save_max_keeps_the_best_game_s_weights_the_final_state_apart_and_load_takes_the_newer(run_dirs):
    name = "tests.pixel_envs_Cue-v0"
    proc = launch(run_dirs, "--save-max", "--test-interval", 0)
    metrics = run_dirs["logs"] / f"{name}_metrics.csv"
    assert wait_for(lambda: metrics.exists() and len(read_metrics(str(metrics))) >= 4, 90), log_of(run_dirs)
    code, out = finish(proc)
    assert code == 0, out
    best_path, last_path = (run_dirs["models"] / f"{name}{suffix}.dat" for suffix in ("", "_last"))
    best, last = load_checkpoint(str(best_path)), load_checkpoint(str(last_path))
    rows = read_metrics(str(metrics))
    rewards = [row["reward"] for row in rows]
    assert best.best_score == last.best_score == max(rewards)
    saved = max(i for i, r in enumerate(rewards) if r >= max(rewards[:i], default=-math.inf))  # the last save
    assert rows[saved]["frames"] <= best.frames, "the best file holds the last game that tied or beat the best"
    if saved + 1 < len(rows):
        assert best.frames <= rows[saved + 1]["frames"], "a game below the best saved over it"
    assert last.frames >= rows[-1]["frames"] and f"saved {last_path}" in out

    common = ["--env", CUE, "--workers", 1, "--load", *run_dirs["flags"]]
    done = run_cli("main.py", *common, "--max-steps", last.frames + 500)
    assert f"resumed from {last.frames:,} frames" in done.stdout + done.stderr  # _last is the newer
    # without --save-max that run saved its final state to the best file: past both, as --max-steps counts the run
    newest = max(load_checkpoint(str(path)).frames for path in (best_path, last_path))
    os.utime(best_path)  # now the best file is the newer
    resumed = load_checkpoint(str(best_path)).frames
    done = run_cli("main.py", *common, "--max-steps", newest + 500)
    assert f"resumed from {resumed:,} frames" in done.stdout + done.stderr


def test_resuming_with_another_optimizer_keeps_the_weights_and_a_new_lr_takes_effect(tmp_path):
    import logging
    from dataclasses import replace

    from checkpoint import save_run
    from run_setup import build_run
    from train import Worker

    cfg = Config(env=CUE, hidden_size=32, workers=1, num_steps=5, log_dir=str(tmp_path))
    run = build_run(cfg, 2, None, logger=None)
    worker = Worker(0, run)
    for _ in range(3):
        worker.update()
    worker.close()
    logger = logging.getLogger("test-resume")
    assert save_run(str(tmp_path / "run.dat"), run, run.model, 1.0, logger)
    ckpt = load_checkpoint(str(tmp_path / "run.dat"))
    steps = [int(state["step"]) for state in ckpt.optimizer["state"].values()]
    assert steps and set(steps) == {3}

    same = build_run(replace(cfg, lr=1e-3), 2, ckpt, logger)
    assert [group["lr"] for group in same.optimizer.param_groups] == [1e-3]
    assert [int(s["step"]) for s in same.optimizer.state_dict()["state"].values()] == steps
    for name, value in same.model.state_dict().items():
        assert torch.equal(value, ckpt.model[name])

    for other in (replace(cfg, optimizer="RMSprop"), replace(cfg, amsgrad=True)):
        fresh = build_run(other, 2, ckpt, logger)
        assert all(int(s["step"]) == 0 for s in fresh.optimizer.state_dict()["state"].values())
        for name, value in fresh.model.state_dict().items():
            assert torch.equal(value, ckpt.model[name])


def bad_config(tmp_path, text):
    path = tmp_path / f"config{len(list(tmp_path.glob('config*.json')))}.json"
    path.write_text(text)
    return path


def main_bad_inputs(tmp_path, models):
    corrupt = models / "corrupt" / "PongNoFrameskip-v4.dat"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(os.urandom(3000))
    pong_model = models / "pong"
    pong_model.mkdir()
    save_checkpoint(str(pong_model / "BreakoutNoFrameskip-v4.dat"), Checkpoint(model=_weights(6, 512)))
    save_checkpoint(str(pong_model / "PongNoFrameskip-v4.dat"), Checkpoint(model=_weights(6, 256)))
    trained = models / "trained"
    trained.mkdir()
    save_checkpoint(
        str(trained / "PongNoFrameskip-v4.dat"), Checkpoint(model=_weights(6, 512), frames=5000, elapsed=100.0)
    )
    truncated = models / "truncated" / "PongNoFrameskip-v4.dat"
    truncated.parent.mkdir()
    truncated.write_bytes((pong_model / "PongNoFrameskip-v4.dat").read_bytes()[:20000])
    file_not_dir = tmp_path / "plainfile"
    file_not_dir.write_text("x")
    return [
        (["--env", "PongNoFrameskp-v4"], "did you mean PongNoFrameskip-v4"),
        (["--env", "CartPole-v1"], "not images"),
        (["--env", "tests.pixel_envs:ContinuousCue-v0"], "Discrete action space"),
        (["--env-config", tmp_path / "none.json"], "not found"),
        (["--env-config", bad_config(tmp_path, "{not json")], "not valid JSON"),
        (["--env-config", bad_config(tmp_path, json.dumps({"Default": {"crop1": 1}}))], "lacks crop2"),
        (
            ["--env-config", bad_config(tmp_path, json.dumps({"Default": {"crop1": 1, "crop2": 1, "dimension2": 0}}))],
            "dimension2 0",
        ),
        (["--amsgrad", "--optimizer", "RMSprop"], "--amsgrad is a variant of Adam"),
        (["--load", "--load-model-dir", trained, "--max-steps", 4000], "--max-steps 4,000 is reached"),
        (["--load", "--load-model-dir", trained, "--max-time", 60], "--max-time 60 is reached"),
        (["--workers", 0], "--workers must be at least 1"),
        (["--num-steps", 0], "--num-steps must be at least 1"),
        (["--lr", 0], "--lr must be a positive number"),
        (["--gamma", 1.5], "--gamma must lie in (0, 1]"),
        (["--test-epsilon", 2], "--test-epsilon is a probability"),
        (["--optimizer", "SGD"], "invalid choice: 'SGD'"),
        (["--gpu-ids", 3], "GPU id 3 does not exist"),
        (["--load", "--load-model-dir", models / "empty"], "no checkpoint at"),
        (["--load", "--env", "BreakoutNoFrameskip-v4", "--load-model-dir", pong_model], "trained for 6 actions"),
        (["--load", "--load-model-dir", pong_model], "hidden size 256"),
        (["--load", "--load-model-dir", corrupt.parent], "corrupt or truncated"),
        (["--load", "--load-model-dir", truncated.parent], "corrupt or truncated"),
        (["--save-model-dir", file_not_dir / "models"], "not writable"),
    ]


def _weights(actions, hidden):
    from model import A3Clstm

    return A3Clstm(1, actions, hidden).state_dict()


def test_bad_input_is_one_line_exit_2_and_nothing_starts(tmp_path):
    logs = tmp_path / "logs"
    cases = main_bad_inputs(tmp_path, tmp_path / "models")
    # each run stops within 30 s (a TimeoutExpired otherwise), as before they ran two at a time
    results = run_cli_each("main.py", [[*args, "--log-dir", logs] for args, _ in cases], timeout=30)
    for (args, words), result in zip(cases, results):
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == ""
    assert not any(logs.glob("*_log")), "a run started"
