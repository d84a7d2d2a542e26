"""Multi-host runs: real torchrun agents, one per host, over the loopback address or between two network
namespaces joined by a veth pair; real gloo traffic, real signals and kills."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace

import pytest

from checkpoint import load_checkpoint
from local_hosts import free_port, network_namespaces, torchrun_command, torchrun_env
from metrics import read_progress
from proctree import alive, descendants
from tests.helpers import ROOT, run_cli, wait_for
from utils import UsageError

PONG = "PongNoFrameskip-v4"
CUE = "tests.pixel_envs:Cue-v0"
RECALL = "tests.pixel_envs:Recall-v0"


class Host:
    """One host of a run: a torchrun agent (in its own session, as a terminal would start it) and its files."""

    def __init__(self, index: int, root, env: str, endpoint: str, args, max_restarts=0, netns=None, hosts=2):
        """`netns`: the network namespace this host runs in (local_hosts.network_namespaces), or None: loopback."""
        self.index, self.env, self.netns = index, env, netns
        self.dir = root / f"host{index}"
        self.dir.mkdir(exist_ok=True)
        flags = [
            *("--env", env, "--workers", 1, "--progress-interval", 1, "--test-interval", 1),
            *("--log-dir", self.dir / "logs", "--save-model-dir", self.dir / "models"),
            *("--load-model-dir", self.dir / "models"),
            *args,
        ]
        self.command = list(map(str, torchrun_command(index, hosts, endpoint, flags, max_restarts, netns)))
        self.seen: set[int] = set()
        self.start()

    def start(self) -> None:
        with open(self.dir / "out", "a") as out:
            self.agent = subprocess.Popen(
                self.command,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=torchrun_env(self.netns),
                start_new_session=True,
            )

    def log(self) -> str:
        name = self.env.replace(":", "_") + (f"_host{self.index}" if self.index else "") + "_log"
        path = self.dir / "logs" / name
        return path.read_text() if path.exists() else ""

    def output(self) -> str:
        return (self.dir / "out").read_text()

    def processes(self) -> set[int]:
        """The agent and everything below it, as seen so far (remembered, to check none is left behind)."""
        self.seen |= {self.agent.pid, *descendants(self.agent.pid)}
        return self.seen

    def progress(self) -> list[dict]:
        name = self.env.replace(":", "_") + (f"_host{self.index}" if self.index else "") + "_progress.jsonl"
        return read_progress(str(self.dir / "logs" / name))

    def stopped(self) -> dict:
        """The progress file's last record, once the host's run has ended (else {})."""
        progress = self.progress()
        return progress[-1] if progress and progress[-1].get("event") == "stopped" else {}

    def syncs(self) -> dict[int, str]:
        """Sync number -> weights fingerprint, from the progress reports (the final sync's last)."""
        return {p["sync"]: p["weights"] for p in self.progress() if "sync" in p}

    def kill(self) -> None:
        """The host dies: the agent and every process below it, at once."""
        for pid in sorted(self.processes()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.agent.wait(10)

    def wait(self, timeout: float) -> int:
        try:
            return self.agent.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"host {self.index} did not stop in {timeout} s:\n{self.output()[-3000:]}") from None


@pytest.fixture
def hosts(tmp_path):
    """Starts hosts for a test; kills whatever is still running at its end."""
    started: list[Host] = []

    def start(count=2, env=CUE, args=(), host_args=None, endpoint=None, netns=(), **kw):
        """`count` hosts on `env` with `args`, and `host_args[i]` on host i only."""
        endpoint = endpoint or f"127.0.0.1:{free_port()}"
        for index in range(count):
            space = netns[index] if netns else None
            extra = [*args, *(host_args or {}).get(index, [])]
            started.append(Host(index, tmp_path, env, endpoint, extra, netns=space, hosts=count, **kw))
        return started[-count:]

    yield start
    for host in started:
        if host.agent.poll() is None:
            host.kill()


def trained(host: Host, syncs: int = 3) -> bool:
    """Whether this host's own workers have trained and the hosts synced `syncs` times."""
    host.processes()
    progress = host.progress()
    return bool(progress) and progress[-1]["host_frames"] > 0 and max(host.syncs(), default=0) >= syncs


def assert_nothing_left(*hosts: Host) -> None:
    left = [pid for host in hosts for pid in host.seen if alive(pid)]
    assert wait_for(lambda: not any(alive(pid) for pid in left), 10), f"processes left behind: {left}"


def assert_synced_and_stopped(h0: Host, h1: Host) -> None:
    """Every sync both hosts logged has the same weights on both; the weights moved; totals add up."""
    s0, s1 = h0.syncs(), h1.syncs()
    common = sorted(set(s0) & set(s1))
    assert len(common) >= 3, (s0, s1)
    assert all(s0[n] == s1[n] for n in common), (s0, s1)
    assert len({s0[n] for n in common}) > 1, "the synced weights never changed"
    ends = [h.stopped() for h in (h0, h1)]
    assert all(end.get("final_sync") for end in ends), (h0.log()[-1500:], h1.log()[-1500:])
    assert ends[0]["sync"] == ends[1]["sync"] and ends[0]["weights"] == ends[1]["weights"], ends
    total, own = zip(*[(end["frames"], end["host_frames"]) for end in ends])
    assert total[0] == total[1] == sum(own) and min(own) > 0, ends
    ckpt = load_checkpoint(str(h0.dir / "models" / f"{h0.env.replace(':', '_')}.dat"))
    assert ckpt.frames == total[0]
    assert not (h1.dir / "models").exists() or not any((h1.dir / "models").iterdir()), "only host 0 saves"


def test_two_hosts_sync_pong_and_ctrl_c_on_one_stops_both(hosts):
    h0, h1 = hosts(env=PONG)
    assert wait_for(lambda: trained(h0) and trained(h1), 150), h0.output()[-3000:] + h1.output()[-3000:]
    os.killpg(h1.agent.pid, signal.SIGINT)  # what Ctrl-C in host 1's terminal sends
    h1.wait(40)
    h0.wait(40)
    assert "stopping: SIGINT received" in h1.log()  # torchrun passes the signal on to main.py
    assert "stopping: host 1 was interrupted" in h0.log()
    assert "stopping this host's torchrun: host 1 was interrupted" in h0.log()
    assert_synced_and_stopped(h0, h1)
    assert_nothing_left(h0, h1)


def test_a_host_that_dies_stops_the_run_with_host_0_checkpoint(hosts):
    h0, h1 = hosts(args=["--sync-timeout", 10])
    assert wait_for(lambda: trained(h0) and trained(h1), 120), h0.output()[-3000:] + h1.output()[-3000:]
    h1.kill()
    assert h0.wait(60) != 0
    assert "stopping: lost the other hosts" in h0.log(), h0.log()[-2000:]
    assert re.search(r"saved .*Cue-v0\.dat", h0.log())
    assert load_checkpoint(str(h0.dir / "models" / "tests.pixel_envs_Cue-v0.dat")).updates > 0
    assert_nothing_left(h0, h1)


def test_with_max_restarts_a_host_rejoins_and_the_run_goes_on(hosts):
    h0, h1 = hosts(max_restarts=1)
    assert wait_for(lambda: trained(h0) and trained(h1), 120), h0.output()[-3000:] + h1.output()[-3000:]
    h1.kill()
    assert wait_for(lambda: "stopping: lost the other hosts" in h0.log(), 60), h0.log()[-2000:]
    h1.start()  # the host comes back: a new agent joins the next rendezvous round
    resumed = r"resumed from ([\d,]+) frames"
    assert wait_for(lambda: re.search(resumed, h0.log()) and re.search(resumed, h1.log()), 120), (
        h0.output()[-3000:] + h1.output()[-3000:]
    )
    frames = int(re.search(resumed, h0.log()).group(1).replace(",", ""))
    assert frames > 0 and re.search(resumed, h1.log()).group(1) == re.search(resumed, h0.log()).group(1)
    before = len(h0.syncs())
    assert wait_for(lambda: h0.log().count("final sync") == 0 and len(h0.syncs()) > before + 2, 60)
    os.killpg(h0.agent.pid, signal.SIGINT)
    h0.wait(60)
    h1.wait(60)
    assert "stopping: host 0 was interrupted" in h1.log(), h1.log()[-2000:]
    assert load_checkpoint(str(h0.dir / "models" / "tests.pixel_envs_Cue-v0.dat")).frames > frames
    assert_nothing_left(h0, h1)


def test_two_synced_hosts_learn_a_memory_task(hosts):
    """The 1-host learning test's task, target and time limit (test_main), on two hosts of one worker each."""
    args = ["--lr", 0.0005, "--test-interval", 0, "--target-score", 0.95, "--target-window", 20, "--max-time", 150]
    h0, h1 = hosts(env=RECALL, args=args)
    assert h0.wait(240) == 0 and h1.wait(60) == 0, h0.output()[-3000:] + h1.output()[-3000:]
    assert "reached --target-score 0.95" in h0.log(), h0.log()[-2000:]
    assert "stopping: host 0 stopped the run" in h1.log()


def test_hosts_with_different_flags_refuse_to_start(hosts):
    h0, h1 = hosts(host_args={1: ["--hidden-size", 256]})
    assert h0.wait(120) != 0 and h1.wait(60) != 0
    for host in (h0, h1):
        lines = [line for line in host.output().splitlines() if line.startswith("error:")]
        assert lines == [
            "error: host 1 runs --hidden-size 256 but host 0 runs --hidden-size 512: "
            "start every host with the same flags"
        ], host.output()[-3000:]
        assert 'Traceback (most recent call last):\n  File "' + ROOT not in host.output()


def test_unreachable_peers_and_bad_sync_flags_are_one_line(tmp_path):
    for flag, value, expected in [
        ("--sync-interval", 0, "error: --sync-interval must be a positive number of seconds, got 0.0"),
        ("--sync-timeout", -1, "error: --sync-timeout must be a positive number of seconds, got -1.0"),
    ]:
        result = run_cli("main.py", flag, value, "--log-dir", tmp_path, "--save-model-dir", tmp_path)
        assert result.returncode == 2 and result.stderr.strip() == expected, result.stderr
    # an env:// launch (torchrun's variables, as a batch system sets them) whose host 0 does not answer
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    result = subprocess.run(
        [sys.executable, "main.py", "--sync-timeout", "3", "--log-dir", tmp_path, "--save-model-dir", tmp_path],
        cwd=ROOT,
        env={k: str(v) for k, v in env.items()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.splitlines()[-1]  # after torch's own C++ log line about the socket
    assert re.fullmatch(r"error: cannot join the other hosts at 127\.0\.0\.1:\d+ \(.*\): check .*", last), last


def test_torchrun_with_several_processes_per_host_is_refused(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "main.py",
            "--log-dir",
            tmp_path,
            "--save-model-dir",
            tmp_path,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "error: start one main.py per host (torchrun --nproc-per-node 1)" in result.stdout + result.stderr


# ---------------------------------------------------------------- two namespaces: hosts with their own addresses


@pytest.fixture
def namespaces():
    """Two hosts with their own addresses; skipped where namespaces cannot be made (root, iproute2)."""
    try:
        with network_namespaces(f"t{os.getpid() % 100000}") as spaces:
            yield spaces
    except UsageError as e:
        pytest.skip(str(e))


def test_two_hosts_in_their_own_network_namespaces_sync_and_stop(hosts, namespaces):
    h0, h1 = hosts(endpoint=f"10.77.0.1:{free_port()}", netns=namespaces)
    assert wait_for(lambda: trained(h0) and trained(h1), 120), h0.output()[-3000:] + h1.output()[-3000:]
    os.killpg(h0.agent.pid, signal.SIGTERM)
    h0.wait(40)
    h1.wait(40)
    assert "stopping: host 0 was interrupted" in h1.log(), h1.log()[-2000:]
    assert_synced_and_stopped(h0, h1)
    assert_nothing_left(h0, h1)


def test_bench_hosts_compares_one_host_with_two(tmp_path):
    out = tmp_path / "hosts.json"
    # A two-host run takes 5-10 s on 2 busy cores before its first update: the measured window starts after that.
    args = ("--env", CUE, "--workers", 2, "--warmup", 12, "--duration", 3, "--progress-interval", 1)
    result = run_cli("-m", "benchmarks.bench_hosts", *args, "--json", out, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| 1 host |" in result.stdout and "| 2 hosts, loopback |" in result.stdout
    runs = json.loads(out.read_text())["runs"]
    assert [r["hosts"] for r in runs.values()] == [1, 2]
    for run in runs.values():
        assert run["frames_per_s"] > 0 and run["frames"] > 0 and run["stop_reason"] == "reached --max-time 15 s"


def test_a_main_py_started_again_by_the_same_torchrun_agent_continues_its_host_s_run(tmp_path):
    """torchrun restarts main.py without counting it when a host joins while this one is still stopping (the
    rejoin test's race): the agent that started the last main.py, not the restart count, says it is a restart."""
    from distributed import Cluster
    from settings import Config

    cfg = replace(Config(), log_dir=str(tmp_path / "logs"), host=1)
    first, restarted = Cluster(1, 2, restarted=False), Cluster(1, 2, restarted=True)
    assert not first.continues(cfg)  # a new torchrun: a new run
    assert first.continues(cfg)  # the same agent started it again
    (tmp_path / "logs" / f"{PONG}_host1_torchrun").write_text("1 1")  # another torchrun's agent, since gone
    assert not first.continues(cfg) and restarted.continues(cfg)
