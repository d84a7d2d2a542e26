"""Several hosts of one multi-host run on this machine: the torchrun command and environment of each host, a
free port for the rendezvous, and network namespaces that give each host an address of its own. For trying a
multi-host run before spreading it over machines; the multi-host tests and benchmarks/bench_hosts.py start
their hosts with these.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager

from utils import UsageError

ROOT = os.path.dirname(os.path.abspath(__file__))
SUBNET = "10.77.0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(index: int, hosts: int, endpoint: str, main_args, max_restarts: int = 0, netns=None) -> list:
    """The command that starts host `index` of `hosts`: torchrun, one main.py, host 0 holding the rendezvous
    store (is_host, so that hosts on one machine do not race for it). `netns`: see network_namespaces."""
    return [
        *(["ip", "netns", "exec", netns["name"]] if netns else []),
        sys.executable,
        "-m",
        "torch.distributed.run",
        *("--nnodes", hosts, "--nproc-per-node", 1, "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint),
        *("--rdzv-conf", f"is_host={int(index == 0)}", "--max-restarts", max_restarts),
        *(["--local-addr", netns["addr"]] if netns else []),
        os.path.join(ROOT, "main.py"),
        *main_args,
    ]


def torchrun_env(netns=None) -> dict:
    """The environment a host needs: torch's shared rendezvous store loses a host that rejoins after a restart
    (so it is turned off), and in a namespace gloo must use its interface, not what the hostname resolves to."""
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    if netns:
        env["GLOO_SOCKET_IFNAME"] = netns["ifname"]
    return env


@contextmanager
def network_namespaces(tag: str):
    """Two network namespaces joined by a veth pair, SUBNET.1 and SUBNET.2: two hosts with their own addresses.
    Yields [{"name", "addr", "ifname"}] per host; raises UsageError where they cannot be made (root, iproute2)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise UsageError("network namespaces need root and iproute2's ip command")
    names = [f"{tag}h0", f"{tag}h1"]
    setup = [
        *[["ip", "netns", "add", name] for name in names],
        ["ip", "link", "add", f"{tag}v0", "type", "veth", "peer", "name", f"{tag}v1"],
        *[["ip", "link", "set", f"{tag}v{i}", "netns", names[i]] for i in range(2)],
        *[["ip", "-n", names[i], "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", f"{tag}v{i}"] for i in range(2)],
        *[["ip", "-n", names[i], "link", "set", dev, "up"] for i in range(2) for dev in (f"{tag}v{i}", "lo")],
    ]
    try:
        for command in setup:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise UsageError(f"cannot make network namespaces here: {' '.join(command)}: {done.stderr.strip()}")
        yield [{"name": names[i], "addr": f"{SUBNET}.{i + 1}", "ifname": f"{tag}v{i}"} for i in range(2)]
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
