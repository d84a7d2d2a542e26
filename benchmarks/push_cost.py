"""What the gradient hand-off costs on the CPU: copying into buffers (SharedLink.push) against an alias.

    python -m benchmarks.push_cost

Times, in this process on one thread, SharedLink.push with Pong's model and an alias of the worker's
gradients (shared.grad = local.grad for every parameter), and one whole 20-step update of train.Worker,
so the copy's share of an update can be read off.
"""

from __future__ import annotations

import sys
import time

import torch

from benchmarks.bench import phase_times
from cli import Parser, run_command
from environment import describe_env
from hogwild import SharedLink
from model import A3Clstm
from settings import Config


def ms_per_call(fn, calls: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1000


def measure(calls: int, updates: int) -> dict:
    torch.set_num_threads(1)
    cfg = Config(env="PongNoFrameskip-v4")
    num_actions = describe_env(cfg.env, cfg.env_config)
    shared, local = (A3Clstm(1, num_actions, cfg.hidden_size) for _ in range(2))
    shared.share_memory()
    for p in local.parameters():
        p.grad = torch.randn_like(p)
    link = SharedLink(shared, local, torch.device("cpu"))
    norm = torch.tensor(1.0)

    def alias() -> None:
        for shared_param, local_param in zip(link.shared, link.local):
            shared_param.grad = local_param.grad

    update = sum(phase_times(cfg, num_actions, updates, count_updates=0)["ms"].values()) * cfg.num_steps
    return {"copy": ms_per_call(lambda: link.push(norm), calls), "alias": ms_per_call(alias, calls), "update": update}


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=200, help="hand-offs timed per way")
    p.add_argument("--updates", type=int, default=40, help="whole updates timed")
    args = p.parse_args(argv)

    def body() -> int:
        ms = measure(args.calls, args.updates)
        print(
            f"hand-off by copy {ms['copy']:.2f} ms, by alias {ms['alias']:.3f} ms; one update {ms['update']:.1f} ms; "
            f"the copy is {ms['copy'] / ms['update'] * 100:.1f}% of an update"
        )
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
