"""main.py end to end on real games: Ctrl-C, resume, limits, and the learning test."""

import os
import signal
import time

import pytest
import torch

from checkpoint import PREPROCESSING, load_checkpoint
from metrics import read_progress
from proctree import alive, descendants
from settings import describe_bf16
from tests.helpers import run_cli, start_cli, wait_for

PONG = "PongNoFrameskip-v4"


def stop_with(proc, signum, timeout=30):
    os.killpg(proc.pid, signum) if signum == signal.SIGINT else proc.send_signal(signum)
    start = time.time()
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, time.time() - start, out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_saves_and_leaves_no_process(run_dirs, signum):
    log = run_dirs["logs"] / f"{PONG}_log"
    flags = ("--workers", 2, "--test-interval", 0, "--progress-interval", 2, "--max-episode-length", 300)
    proc = start_cli("main.py", "--env", PONG, *flags, *run_dirs["flags"])  # a test game within seconds
    try:
        assert wait_for(lambda: log.exists() and "episode reward" in log.read_text(), 120), "no test game logged"
        children = descendants(proc.pid)
        assert len(children) >= 3
        code, took, out = stop_with(proc, signum)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, out
    assert took < 15, f"stopping took {took:.1f} s"
    assert "Traceback" not in out
    assert wait_for(lambda: not any(alive(pid) for pid in children), 5), "processes left behind"
    ckpt = load_checkpoint(str(run_dirs["models"] / f"{PONG}.dat"))
    assert ckpt.frames > 0 and ckpt.updates > 0 and ckpt.args["env"] == PONG
    assert "Time 00h" in log.read_text() and "episode length" in log.read_text()


def test_max_steps_stops_by_itself_and_load_continues_the_counters(run_dirs):
    common = ["--env", PONG, "--workers", 2, "--progress-interval", 2, *run_dirs["flags"]]
    first = run_cli("main.py", *common, "--max-steps", 3000, timeout=180)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "reached --max-steps" in first.stdout
    path = str(run_dirs["models"] / f"{PONG}.dat")
    before = load_checkpoint(path)
    assert before.frames >= 3000 and before.optimizer is not None
    assert before.preprocessing == PREPROCESSING
    second = run_cli("main.py", *common, "--load", "--max-steps", before.frames + 3000, timeout=180)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resumed from {before.frames:,} frames" in second.stdout
    assert "warning" not in second.stdout
    after = load_checkpoint(path)
    assert after.frames >= before.frames + 3000 and after.updates > before.updates
    step = lambda c: float(next(iter(c.optimizer["state"].values()))["step"])  # noqa: E731
    assert step(after) > step(before), "optimizer statistics continue too"

    progress = read_progress(str(run_dirs["logs"] / f"{PONG}_progress.jsonl"))  # both runs' reports, as data
    ends = [i for i, p in enumerate(progress) if p.get("event") == "stopped"]
    assert len(ends) == 2 and ends[-1] == len(progress) - 1
    for end, saved in zip((progress[i] for i in ends), (before, after)):
        assert end["reason"].startswith("reached --max-steps") and end["exit_code"] == 0
        assert end["frames"] == saved.frames and end["updates"] == saved.updates
    reports = [p for p in progress if "event" not in p]
    assert reports and all(a["frames"] <= b["frames"] for a, b in zip(reports, reports[1:]))
    assert all(p["frames_per_s"] >= 0 and p["updates"] >= 0 for p in reports)


def test_resuming_a_checkpoint_of_the_earlier_preprocessing_warns_once(run_dirs):
    common = ["--env", PONG, "--workers", 1, *run_dirs["flags"]]
    assert run_cli("main.py", *common, "--max-steps", 1000, timeout=180).returncode == 0
    path = run_dirs["models"] / f"{PONG}.dat"
    saved = torch.load(path, weights_only=True)
    del saved["preprocessing"]  # as the toolkit saved them before it recorded the preprocessing
    torch.save(saved, path)
    resumed = run_cli("main.py", *common, "--load", "--max-steps", 2000, timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    warnings = [line for line in resumed.stdout.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "before it matched rl_a3c_pytorch" in warnings[0]
    assert load_checkpoint(str(path)).preprocessing == PREPROCESSING, "the run continues on the classic frames"


def test_pipeline_learns_a_memory_task(run_dirs):
    """Model, workers, shared optimizer and GAE together learn Recall-v0 (cue, 10 blank frames, answer)
    to a test mean of 0.95 over 20 games; a policy without memory averages 0.5."""
    result = run_cli(
        "main.py",
        "--env",
        "tests.pixel_envs:Recall-v0",
        "--workers",
        2,
        "--lr",
        0.0005,
        "--test-interval",
        0,
        "--target-score",
        0.95,
        "--target-window",
        20,
        "--max-time",
        150,
        *run_dirs["flags"],
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reached --target-score 0.95" in result.stdout, result.stdout[-2000:]


def test_other_flags_take_effect_end_to_end(run_dirs):
    """Batched envs and per-rank rollout lengths (frames per update), shared RMSprop (its statistics saved),
    --save-max, sampled test games; then no channels-last, private optimizers (none saved), test games with
    random actions."""
    runs = (
        [
            *("--envs-per-worker", 2, "--distributed-step-size", 5, 10, "--optimizer", "RMSprop"),
            *("--save-max", "--test-stochastic", "--max-steps", 800),
        ],
        [
            *("--channels-last", "False", "--shared-optimizer", "False", "--bf16", "auto", "--load"),
            *("--max-steps", 1600, "--test-epsilon", 0.05),
        ],
    )
    for extra in runs:
        result = run_cli(
            "main.py",
            *("--env", "tests.pixel_envs:Cue-v0", "--workers", 2, "--test-interval", 0),
            *run_dirs["flags"],
            *extra,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert ("sampled test games" in result.stdout) == ("--test-stochastic" in extra), result.stdout
        assert ("greedy (epsilon 0.05) test games" in result.stdout) == ("--test-epsilon" in extra), result.stdout
        suffix = "_last" if "--save-max" in extra else ""  # where the final state went
        last = load_checkpoint(str(run_dirs["models"] / f"tests.pixel_envs_Cue-v0{suffix}.dat"))
        if extra is runs[0]:
            # worker 0 plays 5 steps x 2 envs per update, worker 1 10 x 2 (the default would be 20 x 1)
            assert 10 < last.frames / last.updates < 20, (last.frames, last.updates)
            state = next(iter(last.optimizer["state"].values()))
            assert "square_avg" in state and "exp_avg" not in state  # RMSprop's statistics, not Adam's
            assert load_checkpoint(str(run_dirs["models"] / "tests.pixel_envs_Cue-v0.dat")).best_score is not None
    assert last.frames >= 1600 and not last.args["channels_last"] and last.optimizer is None
    assert f"precision: {describe_bf16('auto', torch.device('cpu'))}" in result.stdout  # what auto chose, and why


def test_tensorboard_scalars(run_dirs):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_cli(
        "main.py",
        "--env",
        "tests.pixel_envs:Cue-v0",
        "--workers",
        1,
        "--max-steps",
        600,
        "--test-interval",
        0,
        "--tensorboard-logger",
        *run_dirs["flags"],
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    events = EventAccumulator(str(run_dirs["logs"] / "tensorboard" / "tests.pixel_envs_Cue-v0"))
    events.Reload()
    assert {"train/total", "train/entropy", "test/reward", "test/fps"} <= set(events.Tags()["scalars"])


def test_a_classic_command_line_runs_unchanged(run_dirs):
    """rl_a3c_pytorch's short flags, as its main.py defines them; Ctrl-C stops it, and each flag took effect."""
    models, logs = run_dirs["models"], run_dirs["logs"]
    classic = "-w 1 -ev PongDeterministic-v4 -l 0.0002 -t 1.0 -g 0.98 -s 7 -ns 10 -mel 5000 -hs 256 -ec 0.02 -vc 0.4"
    classic += f" -so True -o Adam -a -smd {models}/ -lmd {models}/ -lg {logs}/ -gp -1 -evc config.json -dss 10 20"
    proc = start_cli("main.py", *classic.split())
    log = logs / "PongDeterministic-v4_log"
    try:
        assert wait_for(lambda: log.exists() and "training PongDeterministic-v4" in log.read_text(), 120)
        assert wait_for(lambda: "frames/s" in log.read_text(), 120)
        code, _, out = stop_with(proc, signal.SIGINT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, out
    args = load_checkpoint(str(models / "PongDeterministic-v4.dat")).args
    expected = {"workers": 1, "lr": 0.0002, "tau": 1.0, "gamma": 0.98, "seed": 7, "num_steps": 10, "hidden_size": 256}
    expected |= {"max_episode_length": 5000, "entropy_coef": 0.02, "value_coef": 0.4, "amsgrad": True}
    expected |= {"distributed_step_size": [10, 20], "shared_optimizer": True}
    assert {k: args[k] for k in expected} == expected
    evaluated = run_cli(
        "gym_eval.py", *f"-ev PongDeterministic-v4 -ne 1 -lmd {models}/ -lgd {logs}/ -s 3 -mel 50 -hs 256".split()
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "1 games: mean" in evaluated.stdout and (logs / "PongDeterministic-v4_eval.json").exists()
