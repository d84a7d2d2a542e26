"""What the processes of a run share, lock-free: counters, the stop flag, test results, the clock, and the
shared model and optimizer (RunShared, handed to each process as one object)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from model import A3Clstm

if TYPE_CHECKING:
    from settings import Config


class Counters:
    """Frames, updates and dropped (non-finite) updates, one shared slot per worker so writes never race."""

    def __init__(self, workers: int, frames: int = 0, updates: int = 0):
        self.table = torch.zeros(3, workers + 1, dtype=torch.int64).share_memory_()
        self.table[0, -1] = frames
        self.table[1, -1] = updates

    def add(self, rank: int, frames: int, updates: int = 0, dropped: int = 0) -> None:
        self.table[0, rank] += frames
        self.table[1, rank] += updates
        self.table[2, rank] += dropped

    def worker_frames(self) -> list[int]:
        """Frames counted by each worker in this run (without the resumed base)."""
        return self.table[0, :-1].tolist()

    def worker_updates(self) -> list[int]:
        return self.table[1, :-1].tolist()

    def this_run(self) -> torch.Tensor:
        """Frames, updates and dropped updates that this process group's workers counted in this run."""
        return self.table[:, :-1].sum(dim=1)

    def base(self) -> torch.Tensor:
        """Frames, updates and dropped updates counted outside the workers' slots (resumed, other hosts)."""
        return self.table[:, -1].clone()

    def set_base(self, counts: torch.Tensor) -> None:
        self.table[:, -1] = counts

    @property
    def frames(self) -> int:
        return int(self.table[0].sum())

    @property
    def updates(self) -> int:
        return int(self.table[1].sum())

    @property
    def dropped(self) -> int:
        return int(self.table[2].sum())


class StopFlag:
    """A stop event in shared memory, lock-free: a process killed with -9 can never leave it locked
    (multiprocessing.Event holds a lock inside is_set(), and a worker killed there would hang the run)."""

    def __init__(self):
        self.flag = torch.zeros(1, dtype=torch.uint8).share_memory_()

    def set(self) -> None:
        self.flag[0] = 1

    def is_set(self) -> bool:
        return bool(self.flag[0])

    def wait(self, timeout: float, poll: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while not self.is_set() and time.monotonic() < deadline:
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
        return self.is_set()


class GameResults:
    """Test-game results passed from the test process to the launcher through a shared ring buffer, and the
    run's best test score (the one place it is kept: resumed from the checkpoint, raised by each game).

    Lock-free for the same reason as StopFlag: the test process may be killed at any instant.
    """

    def __init__(self, capacity: int = 4096, best: float | None = None):
        self.rows = torch.zeros(capacity, 2, dtype=torch.float64).share_memory_()
        self.count = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.best_score = torch.tensor([best is not None, best or 0.0], dtype=torch.float64).share_memory_()

    def put(self, reward: float, length: int) -> None:
        n = int(self.count[0])
        self.rows[n % len(self.rows)] = torch.tensor([reward, length], dtype=torch.float64)
        best = self.best
        self.best_score[1] = reward if best is None else max(best, reward)
        self.best_score[0] = 1.0
        self.count[0] = n + 1

    @property
    def best(self) -> float | None:
        """The best test score of the run so far (None before its first game)."""
        has_best, best = self.best_score.tolist()
        return best if has_best else None

    def since(self, seen: int) -> tuple[list[tuple[float, int]], int]:
        """Results after the first `seen` ones (at most the buffer's capacity), and the new total."""
        n = int(self.count[0])
        start = max(seen, n - len(self.rows))
        rows = [self.rows[i % len(self.rows)].tolist() for i in range(start, n)]
        return [(reward, int(length)) for reward, length in rows], n


@dataclass(frozen=True)
class RunClock:
    """A run's training time, continued across resumes and process restarts: the time the checkpoint it
    resumed had trained, plus the time since this launch."""

    before: float  # seconds trained before this launch (from the checkpoint)
    launched: float  # time.time() of this launch

    def elapsed(self) -> float:
        return self.before + time.time() - self.launched


@dataclass
class RunShared:
    """Everything a run's processes share, handed to each process as one object."""

    cfg: Config
    model: A3Clstm  # the shared model, in shared memory
    optimizer: object | None  # the shared optimizer (None: each worker keeps its own)
    counters: Counters
    stop: StopFlag
    results: GameResults
    parent_pid: int  # the supervisor's: a process whose parent changed stops
    clock: RunClock
