"""How far bf16 convolutions move a worker's gradients and policy from fp32's, on real rollouts.

    python -m benchmarks.bf16_grads --env PongNoFrameskip-v4 --rollouts 30
    python -m benchmarks.bf16_grads --checkpoint trained_models/PongNoFrameskip-v4.dat

A fixed model (fresh, or --checkpoint) plays --rollouts rollouts in fp32 along the replay path; each rollout's
loss is then backpropagated twice, the convolutions recomputed in fp32 and under bf16 autocast, as a worker's
update does (train.rollout_losses). Printed per part of the network (convolutions, LSTM, heads): the cosine
between the two gradients and the norm of their difference relative to fp32's. Beside them, for scale, the
cosine between the fp32 gradients of consecutive rollouts (the sampling noise every update carries anyway),
and how far bf16 moves the policy itself: the KL divergence from fp32's action distribution at each step.
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from agent import Agent
from checkpoint import check_fits, load_checkpoint
from cli import Parser, run_command
from environment import make_env_for
from process import build_model
from settings import Config
from train import ACTING_PATHS, Rollout, collect_rollout, rollout_losses
from utils import UsageError

PARTS = {"convolutions": ("conv",), "LSTM": ("lstm",), "heads": ("actor_linear", "critic_linear")}


def gradients(model: torch.nn.Module, rollout: Rollout, cfg: Config) -> dict[str, torch.Tensor]:
    """The update's gradient of each part of the network (flattened), for `rollout` under `cfg`'s precision."""
    model.zero_grad(set_to_none=True)
    rollout_losses(model, rollout, cfg, ACTING_PATHS["replay"]).total.backward()
    named = dict(model.named_parameters())
    return {
        part: torch.cat([p.grad.flatten() for name, p in named.items() if name.startswith(prefixes)])
        for part, prefixes in PARTS.items()
    }


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """In float64: over millions of elements fp32's sums drift above 1 for gradients this alike."""
    return float(F.cosine_similarity(a.double(), b.double(), dim=0))


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approx.double() - exact.double()).norm() / exact.double().norm())


def policy_kl(model: torch.nn.Module, rollout: Rollout) -> list[float]:
    """KL(fp32 policy || bf16 policy) at every step of `rollout`, both replayed from the same LSTM state."""
    path = ACTING_PATHS["replay"]
    with torch.no_grad():
        _, exact = path.values_and_logits(model, rollout, False)
        _, approx = path.values_and_logits(model, rollout, True)
    log_p, log_q = F.log_softmax(exact.double(), -1), F.log_softmax(approx.double(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).flatten().tolist()


def measure(args) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    fp32 = Config(env=args.env, bf16="off", replay_convs="on")
    bf16 = Config(env=args.env, bf16="on", replay_convs="on")
    device = torch.device("cpu")
    env = make_env_for(fp32)
    model = build_model(env.action_space.n, fp32, device)
    if args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint)
        check_fits(ckpt, args.checkpoint, env.action_space.n, fp32.hidden_size, args.env)
        model.load_state_dict(ckpt.model)
    agent = Agent(model, [env], device, seed=args.seed)
    for _ in range(args.warmup):  # past the first frames of the game, where nothing has happened yet
        collect_rollout(agent, fp32.num_steps, fp32.gamma, ACTING_PATHS["replay"])
    rows, kls, previous = [], [], None
    for _ in range(args.rollouts):
        rollout = collect_rollout(agent, fp32.num_steps, fp32.gamma, ACTING_PATHS["replay"])
        exact, approx = gradients(model, rollout, fp32), gradients(model, rollout, bf16)
        rows.append(
            {
                part: {
                    "cosine": cosine(approx[part], exact[part]),
                    "relative_error": relative_error(approx[part], exact[part]),
                    "cosine_to_previous_rollout": None if previous is None else cosine(exact[part], previous[part]),
                }
                for part in PARTS
            }
        )
        kls.extend(policy_kl(model, rollout))
        previous = exact
    agent.close()
    return {"rows": rows, "kl": kls}


def summarise(result: dict) -> None:
    rows = result["rows"]
    print(f"{len(rows)} rollouts; median over them (min-max):")
    print("| part | cosine bf16 to fp32 | relative error | fp32 cosine to the previous rollout |")
    print("| --- | ---: | ---: | ---: |")
    for part in PARTS:
        cells = []
        for key in ("cosine", "relative_error", "cosine_to_previous_rollout"):
            values = [row[part][key] for row in rows if row[part][key] is not None]
            cells.append(f"{statistics.median(values):.4f} ({min(values):.4f} to {max(values):.4f})")
        print(f"| {part} | " + " | ".join(cells) + " |")
    kl = result["kl"]
    print(f"policy KL(fp32 || bf16) per step: mean {statistics.fmean(kl):.2e}, max {max(kl):.2e} ({len(kl)} steps)")


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="bf16_grads", description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="PongNoFrameskip-v4", help="gymnasium env id")
    p.add_argument("--checkpoint", default=None, help="a model to measure (default: a freshly initialised one)")
    p.add_argument("--rollouts", type=int, default=30, help="rollouts measured")
    p.add_argument("--warmup", type=int, default=5, help="rollouts played first, not measured")
    p.add_argument("--seed", type=int, default=1, help="torch and env seed")
    args = p.parse_args(argv)

    def body() -> int:
        if args.rollouts < 2 or args.warmup < 0:
            raise UsageError("--rollouts must be at least 2 (consecutive ones are compared), --warmup at least 0")
        summarise(measure(args))
        return 0

    return run_command(body)


if __name__ == "__main__":
    raise SystemExit(main())
