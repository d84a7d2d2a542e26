"""ProcessGroup's restarts with real processes killed by SIGKILL: one by one at once, and under CUDA MPS a GPU's
processes together after a backoff.

The processes sleep instead of training: the group reads only which device each one plays on (cfg.gpu_ids)
and whether the run's GPU processes are MPS clients, so a run "on GPUs" runs here on a CPU. The real thing,
a worker killed under MPS, is in test_cuda.py.
"""

import logging
import os
import signal
import time

import pytest

from run_setup import build_run
from settings import Config
from supervisor import EXIT_FAILED, ProcessGroup

GPU0 = {"test", "train0", "train2"}  # gpu_ids (0, 1) and 3 workers: train1 alone on cuda:1


class SleepingGroup(ProcessGroup):
    """A ProcessGroup whose processes sleep, with a short grace for a GPU's processes and a short backoff."""

    SIBLING_GRACE = 1.0
    BACKOFF = 0.5

    def start(self, name: str) -> None:
        process = self.ctx.Process(target=time.sleep, args=(600,), name=name, daemon=True)
        process.start()
        self.processes[name] = process


@pytest.fixture
def group_for(tmp_path):
    """make(mps, gpu_ids): a started SleepingGroup of 3 workers and the test process, --max-restarts 2."""
    groups = []

    def make(mps: bool, gpu_ids: tuple[int, ...] = (0, 1)) -> SleepingGroup:
        cfg = Config(env="tests.pixel_envs:Cue-v0", gpu_ids=gpu_ids, workers=3, hidden_size=32, max_restarts=2)
        group = SleepingGroup(build_run(cfg, 2, None, None), logging.getLogger("test-group"), mps)
        for name in group.names():
            group.start(name)
        groups.append(group)
        return group

    yield make
    for group in groups:
        group.shutdown(lambda: None, grace=0)


def pids(group: ProcessGroup) -> dict[str, int]:
    return {name: process.pid for name, process in group.processes.items()}


def restarted(group: ProcessGroup, before: dict[str, int]) -> set[str]:
    return {name for name, pid in pids(group).items() if pid != before[name]}


def drive_until_restarted(group: ProcessGroup, before: dict[str, int], timeout: float = 15.0) -> set[str]:
    """Call restart_dead as the Supervisor does until a process restarts; the names restarted in that call."""
    deadline = time.monotonic() + timeout
    while not restarted(group, before):
        assert time.monotonic() < deadline, "nothing restarted"
        assert group.restart_dead() is None
        time.sleep(0.05)
    return restarted(group, before)


def kill(group: ProcessGroup, *names: str) -> None:
    for name in names:
        os.kill(group.processes[name].pid, signal.SIGKILL)


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test-group" and r.levelno == logging.WARNING]


def test_under_mps_a_gpu_s_processes_wait_for_each_other_and_restart_together_after_a_backoff(group_for, caplog):
    group = group_for(mps=True)
    before = pids(group)
    kill(group, "train0")
    started = time.monotonic()
    while time.monotonic() < started + 0.5:  # its GPU's other processes still run: nothing restarts
        assert group.restart_dead() is None
        time.sleep(0.05)
    assert restarted(group, before) == set()
    kill(group, "test", "train2")  # MPS's fault reaches them too
    down = time.monotonic()
    assert drive_until_restarted(group, before) == GPU0  # in one call, together
    assert time.monotonic() - down >= SleepingGroup.BACKOFF
    assert group.processes["train1"].pid == before["train1"] and group.processes["train1"].is_alive()
    assert group.group_restarts == {"cuda:0": 1}
    assert group.restarts == {"test": 1, "train0": 1, "train2": 1}
    [line] = warnings_of(caplog)
    assert line.startswith("train0 died (killed by SIGKILL) on cuda:0 under CUDA MPS, which fails its other clients")
    assert "test, train0, train2 start again together 0.5 s after all have exited" in line
    assert line.endswith("(those running in 1 s are killed); restart 1 of 2")


def test_under_mps_processes_that_outlive_their_gpu_s_fault_are_killed_the_backoff_doubles_and_the_limit_holds(
    group_for, caplog
):
    group = group_for(mps=True)
    for count, name in [(1, "train2"), (2, "test")]:
        before = pids(group)
        old = dict(group.processes)
        kill(group, name)
        fault = time.monotonic()
        assert drive_until_restarted(group, before) == GPU0
        backoff = SleepingGroup.BACKOFF * 2 ** (count - 1)
        assert time.monotonic() - fault >= SleepingGroup.SIBLING_GRACE + backoff
        assert all(old[other].exitcode == -signal.SIGKILL for other in GPU0)
        assert group.group_restarts == {"cuda:0": count}
        assert f"start again together {backoff:g} s after" in warnings_of(caplog)[-1]
    kill(group, "train0")
    deadline = time.monotonic() + 10
    while (stop := group.restart_dead()) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert stop == (
        "train0 died (killed by SIGKILL); cuda:0's processes restarted more than --max-restarts 2 times",
        EXIT_FAILED,
    )
    assert len(warnings_of(caplog)) == 2


@pytest.mark.parametrize("mps, gpu_ids", [(False, (0, 1)), (True, (-1,))])
def test_without_mps_or_on_the_cpu_a_process_restarts_alone_at_once(group_for, caplog, mps, gpu_ids):
    group = group_for(mps, gpu_ids)
    before = pids(group)
    kill(group, "train0")
    group.processes["train0"].join(5)
    assert group.restart_dead() is None
    assert restarted(group, before) == {"train0"}
    assert group.restarts == {"train0": 1} and group.group_restarts == {}
    assert warnings_of(caplog) == ["train0 died (killed by SIGKILL); restart 1 of 2"]
