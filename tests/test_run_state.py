"""Shared-memory flags, result buffer and counters the processes talk through; the moving average; export;
atomic writes."""

import os
import time

import torch

from checkpoint import PREPROCESSING, Checkpoint, save_checkpoint
from metrics import moving_average
from model import A3Clstm
from run_state import Counters, GameResults, StopFlag
from tests.helpers import run_cli
from utils import NEW_FILE_MODE, atomic_write


def test_test_results_ring_buffer_keeps_order_and_drops_only_what_overflowed():
    results = GameResults(capacity=4)
    for i in range(3):
        results.put(float(i), 10 + i)
    new, seen = results.since(0)
    assert new == [(0.0, 10), (1.0, 11), (2.0, 12)] and seen == 3
    for i in range(3, 9):
        results.put(float(i), 10 + i)
    new, seen = results.since(seen)
    assert [r for r, _ in new] == [5.0, 6.0, 7.0, 8.0] and seen == 9
    assert results.since(seen) == ([], 9)
    assert results.best == 8.0


def test_the_best_score_starts_from_the_resumed_one_and_only_rises():
    assert GameResults().best is None
    results = GameResults(best=5.0)
    for reward in (3.0, 7.0, -2.0):
        results.put(reward, 1)
    assert results.best == 7.0


def test_stop_flag_wait_returns_on_timeout_and_when_set():
    flag = StopFlag()
    start = time.monotonic()
    assert flag.wait(0.2) is False and time.monotonic() - start >= 0.2
    flag.set()
    assert flag.wait(10) is True and flag.is_set()


def test_counters_sum_worker_slots_and_the_resumed_base():
    counters = Counters(workers=2, frames=100, updates=5)
    counters.add(0, 40, updates=1)
    counters.add(1, 20, dropped=1)
    assert (counters.frames, counters.updates, counters.dropped) == (160, 6, 1)
    assert counters.table.is_shared()


def test_moving_average():
    assert moving_average([1, 3, 5, 7], 2) == [1, 2, 4, 6]


def test_export_writes_a_bare_state_dict_the_classic_tool_loads(tmp_path):
    model = A3Clstm(1, 6)
    source = tmp_path / "run.dat"
    save_checkpoint(str(source), Checkpoint(model=model.state_dict(), frames=5, preprocessing=PREPROCESSING))
    result = run_cli("checkpoint.py", "export", source, tmp_path / "classic.dat")
    assert result.returncode == 0, result.stderr
    bare = torch.load(tmp_path / "classic.dat", weights_only=True)
    assert set(bare) == set(model.state_dict())
    A3Clstm(1, 6).load_state_dict(bare)
    old = tmp_path / "old.dat"
    save_checkpoint(str(old), Checkpoint(model=model.state_dict()))
    refused = run_cli("checkpoint.py", "export", old, tmp_path / "x.dat")
    assert refused.returncode == 2 and "not trained on rl_a3c_pytorch's frames" in refused.stderr
    assert not (tmp_path / "x.dat").exists()


def test_max_time_counts_the_training_time_the_run_resumed_with():
    from run_setup import build_run
    from settings import Config
    from supervisor import RunMonitor

    ckpt = Checkpoint(model=A3Clstm(1, 6, 32).state_dict(), frames=100, elapsed=50.0)
    for max_time, reached in ((40.0, True), (3600.0, False)):
        cfg = Config(max_time=max_time, hidden_size=32)
        monitor = RunMonitor(build_run(cfg, 6, ckpt, logger=_Quiet()), _Quiet())
        assert (monitor.limit_reached() is not None) == reached


class _Quiet:
    def info(self, *args):
        pass


def test_an_atomic_write_replaces_the_file_whole_with_a_new_file_s_permissions_or_not_at_all(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    try:
        with atomic_write(str(path)) as f:
            f.write("half of the new")
            raise OSError("disk full")
    except OSError:
        pass
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]  # no temp file left behind
    with atomic_write(str(path)) as f:
        f.write("new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["results.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == NEW_FILE_MODE == 0o666 & ~umask  # as open() makes it, not mkstemp's 0600
