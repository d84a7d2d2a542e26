"""One Hogwild training worker: play a rollout, compute A3C losses, push gradients into the shared model."""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from agent import Agent, encode, to_device
from environment import frames_per_step, make_env_for
from hogwild import SharedLink
from metrics import setup_logger, tensorboard_writer
from model import A3Clstm
from process import build_model, init_process
from run_state import RunShared
from settings import Config
from shared_optim import make_optimizer

EXIT_NAN = 3


# ---------------------------------------------------------------- returns, advantages, losses


def n_step_returns(rewards, dones, bootstrap, gamma: float):
    """Discounted returns [T, K]: R_t = r_t + gamma * R_{t+1}, cut where an episode ended at step t.
    Everything but the recurrence itself is computed for all steps at once: on a GPU each operation is
    a launch the host pays for."""
    discounts = gamma * (1.0 - dones)
    running, returns = bootstrap, []
    for t in reversed(range(rewards.shape[0])):
        running = torch.addcmul(rewards[t], discounts[t], running)
        returns.append(running)
    return torch.stack(returns[::-1])


def gae(rewards, values, dones, bootstrap, gamma: float, tau: float):
    """Generalised advantage estimates [T, K] with lambda = tau; no bootstrap past an episode end:
    A_t = delta_t + gamma * tau * A_{t+1}, delta_t = r_t + gamma * V_{t+1} - V_t, both cut at an end."""
    nonterminal = 1.0 - dones
    next_values = torch.cat((values[1:], bootstrap.unsqueeze(0)))
    deltas = rewards + gamma * next_values * nonterminal - values
    decays = (gamma * tau) * nonterminal
    running, advantages = torch.zeros_like(bootstrap), []
    for t in reversed(range(rewards.shape[0])):
        running = torch.addcmul(deltas[t], decays[t], running)
        advantages.append(running)
    return torch.stack(advantages[::-1])


class Losses(NamedTuple):
    total: torch.Tensor
    policy: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor


def a3c_loss(logits, values, actions, returns, advantages, entropy_coef: float, value_coef: float) -> Losses:
    """rl_a3c_pytorch's loss, summed over time and averaged over envs.

    policy = -sum(log pi(a) * A) - entropy_coef * sum(H); value = sum(0.5 * (R - V)^2);
    total = policy + value_coef * value. Advantages and returns carry no gradient.
    """
    log_probs = F.log_softmax(logits, dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    taken = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    envs = values.shape[1]
    policy = -(taken * advantages.detach()).sum() / envs - entropy_coef * entropy.sum() / envs
    value = 0.5 * (returns.detach() - values).pow(2).sum() / envs
    return Losses(policy + value_coef * value, policy, value, entropy.mean())


# ---------------------------------------------------------------- rollouts and acting paths


@dataclass
class Rollout:
    kept: tuple[torch.Tensor, ...]  # what the acting path kept of each step, stacked: [T, K, ...] each
    starts: torch.Tensor  # [T, K] 1.0 where the LSTM state was zeroed before step t
    actions: torch.Tensor  # [T, K]
    rewards: torch.Tensor  # [T, K], truncation bootstrap folded in
    dones: torch.Tensor  # [T, K]
    state: tuple  # LSTM (hx, cx) before step 0
    bootstrap: torch.Tensor  # [K] critic value after the last step


class KeepConvGraphs:
    """The default acting path: each step's convolutions keep their autograd graph, so that the update
    backpropagates through the forward pass that chose the action instead of computing it again; the LSTM and
    the heads act without autograd, and A3Clstm.unroll replays them over the kept features in one batched pass."""

    name = "fast"

    def act(self, agent: Agent) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        features = agent.features()
        with torch.no_grad():
            action, _, _ = agent.act(greedy=False, features=features)
        return action, (features,)

    def values_and_logits(self, model: A3Clstm, rollout: Rollout, bf16: bool):
        return model.unroll(rollout.kept[0], rollout.state, rollout.starts)


class ReplayConvs:
    """--replay-convs (and --cuda-graph, whose captured forward keeps no graph): acting keeps no autograd graph;
    the update recomputes the convolutions over the kept frames in one batched pass (the same weights and
    frames, so the same loss) with fewer, larger kernels, then unrolls the LSTM as the default path does."""

    name = "replay"

    def act(self, agent: Agent) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        frames = agent.obs
        with torch.no_grad():
            action, _, _ = agent.act(greedy=False)
        return action, (frames,)

    def values_and_logits(self, model: A3Clstm, rollout: Rollout, bf16: bool):
        frames = rollout.kept[0]
        steps, k = frames.shape[:2]
        features = encode(model, frames.flatten(0, 1), bf16).view(steps, k, -1)
        return model.unroll(features, rollout.state, rollout.starts)


class Textbook:
    """The classic tool's path, the baseline benchmarks/bench.py measures the others against: every step keeps
    its whole autograd graph (convolutions, LSTM cell, heads), and the update backpropagates through them all."""

    name = "textbook"

    def act(self, agent: Agent) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        features = agent.features()
        action, value, logits = agent.act(greedy=False, features=features)
        return action, (features, value, logits)

    def values_and_logits(self, model: A3Clstm, rollout: Rollout, bf16: bool):
        return rollout.kept[1:]


ACTING_PATHS = {path.name: path for path in (KeepConvGraphs(), ReplayConvs(), Textbook())}


def collect_rollout(agent: Agent, steps: int, gamma: float, path=ACTING_PATHS["fast"]) -> Rollout:
    """Play `steps` steps in every env, sampling actions, along acting path `path`."""
    agent.detach_state()
    device = agent.device
    state = agent.state
    starts, actions, rewards, dones, kept = [], [], [], [], []  # stacked once at the end: one copy each
    for _ in range(steps):
        starts.append(agent.starts)
        action, step_kept = path.act(agent)
        kept.append(step_kept)
        actions.append(action)
        result = agent.step(action)
        for index, frame in result.final_obs.items():
            result.rewards[index] += gamma * agent.value_of(frame, index)
        rewards.append(result.rewards)
        dones.append(result.terminated | result.truncated)
    with torch.no_grad():
        bootstrap, _, _ = agent.forward()
    return Rollout(
        kept=tuple(torch.stack(column) for column in zip(*kept)),
        starts=torch.stack(starts),
        actions=torch.stack(actions),
        rewards=to_device(torch.from_numpy(np.stack(rewards)), device),
        dones=to_device(torch.from_numpy(np.stack(dones).astype(np.float32)), device),
        state=state,
        bootstrap=bootstrap,
    )


def rollout_losses(model: A3Clstm, rollout: Rollout, cfg: Config, path=ACTING_PATHS["fast"]) -> Losses:
    values, logits = path.values_and_logits(model, rollout, cfg.uses_bf16(rollout.starts.device))
    returns = n_step_returns(rollout.rewards, rollout.dones, rollout.bootstrap, cfg.gamma)
    advantages = gae(rollout.rewards, values.detach(), rollout.dones, rollout.bootstrap, cfg.gamma, cfg.tau)
    return a3c_loss(logits, values, rollout.actions, returns, advantages, cfg.entropy_coef, cfg.value_coef)


# ---------------------------------------------------------------- the update


def apply_update(model: A3Clstm, link: SharedLink, optimizer, loss: torch.Tensor, max_grad_norm: float) -> bool:
    """Backpropagate, clip, hand the gradients to the shared model and step; a non-finite one is dropped.
    On a GPU the norm is read on the CPU after the one wait that the gradients' copies need."""
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if max_grad_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(model.parameters(), max_grad_norm, norm)
    if not math.isfinite(link.push(norm)):
        return False
    optimizer.step()
    return True


# ---------------------------------------------------------------- the worker process


def train_worker(rank: int, run: RunShared, incarnation: int = 0):
    """Process entry: run the worker, logging its rank and the error if it dies. A restarted worker
    (`incarnation` > 0) takes new seeds, so that it does not replay its predecessor's games."""
    seed = run.cfg.seed_for(rank, incarnation)
    init_process(f"a3c train {rank}", seed, run.cfg.device_for(rank))
    logger = setup_logger(f"train{rank}", run.cfg.log_path("_log"))
    logger.info("train%d started on %s with seed %d", rank, run.cfg.device_for(rank), seed)
    try:
        sys.exit(run_worker(rank, run, logger, seed))
    except Exception:
        logger.exception("worker %d died", rank)
        sys.exit(1)


class Worker:
    """One worker's envs, model, agent and link to the shared model; `update` is one turn of its loop."""

    def __init__(self, rank: int, run: RunShared, seed: int | None = None):
        cfg = self.cfg = run.cfg
        self.rank, self.run = rank, run
        self.device = cfg.device_for(rank)
        self.path = ACTING_PATHS[cfg.acting_path(self.device)]
        envs = [make_env_for(cfg) for _ in range(cfg.envs_per_worker)]
        self.model = build_model(envs[0].action_space.n, cfg, self.device)
        self.optimizer = run.optimizer or make_optimizer(
            cfg.optimizer, run.model.parameters(), cfg.lr, cfg.amsgrad, shared=False
        )
        self.link = SharedLink(run.model, self.model, self.device)
        self.agent = Agent(
            self.model,
            envs,
            self.device,
            seed=cfg.seed_for(rank) if seed is None else seed,
            bf16=cfg.uses_bf16(self.device),
            cuda_graph=cfg.uses_cuda_graph(self.device),
        )
        self.steps = cfg.steps_for(rank)
        self.frames_per_rollout = round(self.steps * len(envs) * frames_per_step(envs[0]))

    def update(self) -> tuple[bool, Losses]:
        """Pull the weights, play a rollout, push its gradients; whether the update was finite, and its losses."""
        self.pull()
        losses = self.losses(self.act())
        return self.learn(losses), losses

    def pull(self) -> None:
        self.link.pull()

    def act(self) -> Rollout:
        return collect_rollout(self.agent, self.steps, self.cfg.gamma, self.path)

    def losses(self, rollout: Rollout) -> Losses:
        return rollout_losses(self.model, rollout, self.cfg, self.path)

    def learn(self, losses: Losses) -> bool:
        return apply_update(self.model, self.link, self.optimizer, losses.total, self.cfg.max_grad_norm)

    def close(self) -> None:
        self.agent.close()


def run_worker(rank: int, run: RunShared, logger, seed: int | None = None) -> int:
    cfg, counters = run.cfg, run.counters
    worker = Worker(rank, run, seed)
    bad_in_a_row = 0
    writer = tensorboard_writer(cfg) if rank == 0 else None
    try:
        while not run.stop.is_set() and os.getppid() == run.parent_pid:
            applied, losses = worker.update()
            if applied:
                bad_in_a_row = 0
                counters.add(rank, worker.frames_per_rollout, updates=1)
                if writer is not None and counters.worker_updates()[rank] % 10 == 0:
                    for name, value in losses._asdict().items():
                        writer.add_scalar(f"train/{name}", float(value), counters.frames)
                continue
            bad_in_a_row += 1
            counters.add(rank, worker.frames_per_rollout, dropped=1)
            if bad_in_a_row >= cfg.max_nan_updates:
                logger.error("worker %d: %d non-finite updates in a row, stopping", rank, bad_in_a_row)
                return EXIT_NAN
    finally:
        worker.close()
        if writer is not None:
            writer.close()
    return 0


if __name__ == "__main__":
    logging.error("train.py is a worker module; start training with python main.py")
    sys.exit(2)
