"""One run across several hosts: torchrun starts main.py once per host, and every host trains its own Hogwild
group as a single-host run does. A sync thread in each host's launcher keeps the hosts in step over
torch.distributed with the gloo backend (CPU hosts and GPU hosts alike):

- a control round every second (or every --sync-interval, if shorter): one small all-reduce of the hosts'
  frame, update and dropped-update counts (so counters, progress lines and --max-steps are global), of their
  votes to sync the weights now, and of their stop requests (so a stop on any host stops all of them);
- a weight sync every --sync-interval seconds: each host all-reduces the change its workers made to its shared
  weights since the last sync and applies the mean (or, with --sync-op sum, the sum) of the hosts' changes.

Why the mean: between two syncs each host's change is already a whole step of its own Hogwild group, made at
its own learning rate; the mean keeps that step size and averages the hosts' noise, and the synced weights stay
within the hosts' own weights. The sum applies every host's change as if all workers shared one model (what a
single host with all the workers would do), but each change was computed without the others', so with long
intervals or many hosts it overshoots: W hosts step W times as far.

Only python main.py under torchrun imports this module; a plain run has no distributed code on its path.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import zlib
from dataclasses import dataclass, replace
from datetime import timedelta

import torch
import torch.distributed as dist

from checkpoint import Checkpoint
from run_state import RunShared
from settings import Config, seed_block
from utils import UsageError, atomic_write, first_line

# What must be the same on every host, or the collectives would not fit or the hosts would learn apart.
MUST_MATCH = ("env", "hidden_size", "sync_op", "sync_interval")
CONTROL_TICK = 1.0  # seconds between control rounds, at most: how soon a stop on one host reaches the others
# A host's stop request in the control round, by severity; the reason the other hosts give for their stop.
STOPPED, INTERRUPTED, FAILED = 1, 2, 3
STOP_REASONS = {STOPPED: "stopped the run", INTERRUPTED: "was interrupted", FAILED: "failed"}


def host_seed(seed: int, everyone: list[dict], host: int) -> int:
    """Host `host`'s --seed: past the seed blocks of the hosts before it (`everyone`: each host's workers and
    envs_per_worker), so that no two envs of the run share a seed."""
    return seed + sum(seed_block(theirs["workers"], theirs["envs_per_worker"]) for theirs in everyone[:host])


@dataclass(frozen=True)
class Cluster:
    """This host's place in the run: its rank among `hosts`, and whether torchrun restarted it."""

    host: int
    hosts: int
    restarted: bool

    @classmethod
    def join(cls, cfg: Config) -> Cluster:
        """Join the process group torchrun set up; a bad setup is one UsageError line."""
        if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) != 1:
            raise UsageError(
                "start one main.py per host (torchrun --nproc-per-node 1): its workers come from --workers"
            )
        try:
            dist.init_process_group("gloo", timeout=timedelta(seconds=cfg.sync_timeout))
        except (RuntimeError, ValueError) as e:
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            raise UsageError(
                f"cannot join the other hosts at {where} ({first_line(e)}): check torchrun's --rdzv-endpoint"
            ) from None
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0)

    def host_config(self, cfg: Config) -> Config:
        """`cfg` for this host, once every host's flags are known to agree: its rank, and seeds that no other
        host's processes use (each host's workers and test process take the next block of seeds)."""
        mine = {"workers": cfg.workers, "envs_per_worker": cfg.envs_per_worker}
        mine |= {name: getattr(cfg, name) for name in MUST_MATCH}
        everyone: list[dict] = [{} for _ in range(self.hosts)]
        dist.all_gather_object(everyone, mine)
        for host, theirs in enumerate(everyone):
            for name in MUST_MATCH:
                if theirs[name] != everyone[0][name]:
                    flag = "--" + name.replace("_", "-")
                    raise UsageError(
                        f"host {host} runs {flag} {theirs[name]} but host 0 runs {flag} {everyone[0][name]}: "
                        "start every host with the same flags"
                    )
        return replace(cfg, host=self.host, hosts=self.hosts, seed=host_seed(cfg.seed, everyone, self.host))

    def continues(self, cfg: Config) -> bool:
        """Whether this main.py goes on with its host's run rather than starting one: torchrun's agent here
        restarted it, after a failure (its restart count) or because a host joined while this one was still
        stopping (a restart torchrun does not count). The agent that started this host's last main.py is kept
        in <log>_torchrun, and this one is recorded there for the next."""
        path, agent = cfg.log_path("_torchrun"), agent_identity()
        try:
            with open(path) as f:
                same_agent = f.read() == agent
        except OSError:
            same_agent = False
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_write(path) as f:
            f.write(agent)
        return self.restarted or same_agent

    def shared_checkpoint(self, cfg: Config, local: Checkpoint | None) -> Checkpoint | None:
        """The checkpoint every host starts from: the one with the most updates among those the hosts have
        (host 0's after a restart, as only host 0 saves). With --load and none anywhere: a UsageError."""
        updates: list[int] = [0] * self.hosts
        dist.all_gather_object(updates, local.updates if local is not None else -1)
        source = max(range(self.hosts), key=lambda host: (updates[host], -host))
        if updates[source] < 0:
            if cfg.load:
                raise UsageError(
                    f"--load: no host has {cfg.checkpoint_path(cfg.load_model_dir)}: train first, "
                    "or put the checkpoint in host 0's --load-model-dir"
                )
            return None
        box = [local if self.host == source else None]
        dist.broadcast_object_list(box, src=source)
        return box[0]

    def leave(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def agent_identity() -> str:
    """The process that started this one (torchrun's agent): its pid and start time, as a pid is reused."""
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/stat") as f:
            started = f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "?"
    return f"{parent} {started}"


def fingerprint(weights: torch.Tensor) -> str:
    """A short checksum of a host's synced weights: equal on every host after each sync (logged to show it)."""
    return f"{zlib.crc32(weights.numpy().tobytes()):08x}"


class HostSync(threading.Thread):
    """The launcher's link to the other hosts: control rounds, weight syncs and the final sync at the stop.

    The Supervisor asks for a stop with `request_stop`, reads `stopped_by()` and `error` as it supervises, and
    calls `finish` once its workers are down, so that the final sync leaves every host with the same weights.
    """

    def __init__(self, run: RunShared, cluster: Cluster):
        super().__init__(name="host sync", daemon=True)
        cfg = run.cfg
        self.cluster = cluster
        self.interval = cfg.sync_interval
        self.mean = cfg.sync_op == "mean"
        self.counters = run.counters
        self.params = [p.data for p in run.model.parameters()]
        for param in self.params:  # every host starts from the same weights: host 0's (all resumed the same)
            dist.broadcast(param, src=0)
        self.anchor = self.flat_weights()  # the weights of the last sync, the same on every host
        self.resumed = self.counters.base()  # frames, updates, dropped before this run
        self.wake = threading.Event()
        self.workers_down = threading.Event()
        self.local_stop = 0
        self.stops: list[int] = []  # each host's stop request, once any host asked to stop
        self.error: str | None = None  # why the link to the other hosts broke
        self.next_sync = time.monotonic() + self.interval
        self.last_sync = (0, fingerprint(self.anchor))  # (syncs so far, their weights): one tuple, read whole

    def flat_weights(self) -> torch.Tensor:
        return torch.cat([p.reshape(-1) for p in self.params])

    def request_stop(self, failed: bool, interrupted: bool) -> None:
        """Tell the other hosts, at the next control round (now), that this host stops the run."""
        self.local_stop = FAILED if failed else INTERRUPTED if interrupted else STOPPED
        self.wake.set()

    def stopped_by(self) -> tuple[int, str, bool] | None:
        """The first host that asked to stop: its rank, why (for the log), and whether the run failed."""
        if not any(self.stops):
            return None
        host = next(h for h, code in enumerate(self.stops) if code)
        return host, STOP_REASONS[self.stops[host]], max(self.stops) == FAILED

    def stop_agent_if_interrupted_elsewhere(self, logger) -> None:
        """Ctrl-C on one host stops that host's torchrun; the others' would wait minutes at their exit barrier
        for it, so a host stopped by another's interrupt stops its own torchrun agent too (its parent)."""
        asked_here = self.stops and self.stops[self.cluster.host]
        if asked_here or INTERRUPTED not in self.stops or "TORCHELASTIC_RUN_ID" not in os.environ:
            return
        logger.info("stopping this host's torchrun: host %d was interrupted", self.stops.index(INTERRUPTED))
        os.kill(os.getppid(), signal.SIGTERM)

    def finish(self, timeout: float) -> str | None:
        """Called once this host's workers are down: wait for the final sync; None, or why it failed."""
        self.workers_down.set()
        self.wake.set()
        self.join(timeout)
        if self.is_alive():
            return f"the final sync did not finish in {timeout:.0f} s"
        return self.error

    def run(self) -> None:
        try:
            while self.control_round():
                self.wake.wait(min(CONTROL_TICK, self.interval))
                self.wake.clear()
            self.workers_down.wait()
            self.final_round()
        except Exception as e:  # gloo's errors for a peer that died, hung or closed: the Supervisor stops the run
            self.error = first_line(e)

    def control_round(self) -> bool:
        """One all-reduce of counts, sync votes and stop requests; False once any host asked to stop."""
        hosts = self.cluster.hosts
        local = self.counters.this_run()
        control = torch.zeros(4 + hosts, dtype=torch.int64)
        control[:3] = local
        control[3] = time.monotonic() >= self.next_sync
        control[4 + self.cluster.host] = self.local_stop
        dist.all_reduce(control)
        self.set_totals(control[:3], local)
        if control[3] > 0:
            self.sync_weights(final=False)
        stops = control[4:].tolist()
        if any(stops):
            self.stops = stops
            return False
        return True

    def final_round(self) -> None:
        """With the workers down: exact totals of the counters, and the last weight sync."""
        local = self.counters.this_run()
        totals = local.clone()
        dist.all_reduce(totals)
        self.set_totals(totals, local)
        self.sync_weights(final=True)

    def set_totals(self, totals: torch.Tensor, local: torch.Tensor) -> None:
        """Make the Counters read the run's totals: the base slot holds what the other hosts counted."""
        self.counters.set_base(self.resumed + totals - local)

    def sync_weights(self, final: bool) -> None:
        """Apply the hosts' mean (or summed) change since the last sync. The weights are read once and corrected
        in place, so what the workers write meanwhile is kept; at the final sync (workers down) all are equal."""
        with torch.no_grad():
            snapshot = self.flat_weights()
            change = snapshot - self.anchor
            dist.all_reduce(change)
            if self.mean:
                change /= self.cluster.hosts
            self.anchor += change
            correction = self.anchor - snapshot
            offset = 0
            for param in self.params:
                n = param.numel()
                if final:
                    param.copy_(self.anchor[offset : offset + n].view_as(param))
                else:
                    param.add_(correction[offset : offset + n].view_as(param))
                offset += n
        self.next_sync = time.monotonic() + self.interval
        self.last_sync = (self.last_sync[0] + 1, fingerprint(self.anchor))
