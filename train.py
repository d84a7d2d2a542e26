"""One Hogwild training worker: play a rollout, compute A3C losses, push gradients into the shared model."""

from __future__ import annotations

import logging
import os
import signal
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from agent import Agent
from environment import frames_per_step, make_env_for
from model import A3Clstm
from shared_optim import make_optimizer
from utils import Config, Counters, setup_logger, tensorboard_writer

EXIT_NAN = 3


# ---------------------------------------------------------------- returns, advantages, losses


def n_step_returns(rewards, dones, bootstrap, gamma: float):
    """Discounted returns [T, K]: R_t = r_t + gamma * R_{t+1}, cut where an episode ended at step t."""
    returns = torch.empty_like(rewards)
    running = bootstrap
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * running * (1.0 - dones[t])
        returns[t] = running
    return returns


def gae(rewards, values, dones, bootstrap, gamma: float, tau: float):
    """Generalised advantage estimates [T, K] with lambda = tau; no bootstrap past an episode end."""
    advantages = torch.empty_like(rewards)
    running = torch.zeros_like(bootstrap)
    next_value = bootstrap
    for t in reversed(range(rewards.shape[0])):
        nonterminal = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * nonterminal - values[t]
        running = delta + gamma * tau * nonterminal * running
        advantages[t] = running
        next_value = values[t]
    return advantages


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


# ---------------------------------------------------------------- rollouts


@dataclass
class Rollout:
    features: list[torch.Tensor]  # T tensors [K, 1024], each with its step's convolution graph
    starts: torch.Tensor  # [T, K] 1.0 where the LSTM state was zeroed before step t
    actions: torch.Tensor  # [T, K]
    rewards: torch.Tensor  # [T, K], truncation bootstrap folded in
    dones: torch.Tensor  # [T, K]
    state: tuple  # LSTM (hx, cx) before step 0
    bootstrap: torch.Tensor  # [K] critic value after the last step
    values: torch.Tensor | None = None  # [T, K] with graph (textbook mode)
    logits: torch.Tensor | None = None  # [T, K, A] with graph (textbook mode)


def collect_rollout(agent: Agent, steps: int, gamma: float, textbook: bool, bf16: bool = False) -> Rollout:
    """Play `steps` steps in every env, sampling actions.

    Each step's convolutions keep their autograd graph, so the update backpropagates through the
    forward pass that chose the action instead of computing it again. Fast path: the LSTM and the
    heads act without autograd and `A3Clstm.unroll` replays them over the stored features in one
    batched pass. Textbook path: every step keeps its whole graph, as the classic tool does.
    `bf16` runs the convolutions under bfloat16 autocast.
    """
    agent.detach_state()
    device = agent.device
    k = len(agent.envs)
    starts = torch.empty(steps, k, device=device)
    actions = torch.empty(steps, k, dtype=torch.long, device=device)
    rewards = torch.empty(steps, k)
    dones = torch.empty(steps, k)
    state = agent.state
    features, values, logits = [], [], []
    for t in range(steps):
        starts[t] = agent.starts
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            features.append(agent.encode().float())
        with nullcontext() if textbook else torch.no_grad():
            actions[t], value, step_logits = agent.act(greedy=False, features=features[t])
        values.append(value)
        logits.append(step_logits)
        result = agent.step(actions[t])
        for index, frame in result.final_obs.items():
            result.rewards[index] += gamma * agent.value_of(frame, index)
        rewards[t] = torch.from_numpy(result.rewards)
        dones[t] = torch.from_numpy((result.terminated | result.truncated).astype("float32"))
    with torch.no_grad():
        bootstrap, _, _ = agent.forward()
    rollout = Rollout(features, starts, actions, rewards.to(device), dones.to(device), state, bootstrap)
    if textbook:
        rollout.values, rollout.logits = torch.stack(values), torch.stack(logits)
    return rollout


def rollout_losses(model: A3Clstm, rollout: Rollout, cfg: Config) -> Losses:
    if rollout.values is None:
        values, logits = model.unroll(torch.stack(rollout.features), rollout.state, rollout.starts)
    else:
        values, logits = rollout.values, rollout.logits
    returns = n_step_returns(rollout.rewards, rollout.dones, rollout.bootstrap, cfg.gamma)
    advantages = gae(rollout.rewards, values.detach(), rollout.dones, rollout.bootstrap, cfg.gamma, cfg.tau)
    return a3c_loss(logits, values, rollout.actions, returns, advantages, cfg.entropy_coef, cfg.value_coef)


# ---------------------------------------------------------------- the shared model link


class SharedLink:
    """Copies shared weights into the worker's model and the worker's gradients into the shared model.

    Gradients are copied into this worker's own CPU buffers (pinned when the model is on a GPU)
    and handed to the shared parameters on every update. The classic alias-once pattern breaks on
    torch >= 2.0, where zero_grad() drops the grad tensors the shared model still points at.
    """

    def __init__(self, shared: A3Clstm, local: A3Clstm, device: torch.device):
        self.shared = list(shared.parameters())
        self.local = list(local.parameters())
        self.device = device
        self.pin = device.type == "cuda"
        self.grads: list[torch.Tensor] = []  # allocated on the first push: the test process never pushes

    def pull(self) -> None:
        with torch.no_grad():
            for local, shared in zip(self.local, self.shared):
                local.copy_(shared)

    def push(self) -> None:
        """From a GPU: all copies queued without waiting, then one wait before the optimizer reads them."""
        if not self.grads:
            self.grads = [torch.zeros(p.shape, pin_memory=self.pin) for p in self.shared]
        for buffer, local, shared in zip(self.grads, self.local, self.shared):
            shared.grad = None if local.grad is None else buffer.copy_(local.grad, non_blocking=self.pin)
        if self.pin:
            torch.cuda.synchronize(self.device)


def apply_update(model: A3Clstm, link: SharedLink, optimizer, loss: torch.Tensor, max_grad_norm: float) -> bool:
    """Backpropagate, clip, hand the gradients to the shared model and step; a non-finite one is dropped."""
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if not torch.isfinite(norm):
        return False
    if max_grad_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(model.parameters(), max_grad_norm, norm)
    link.push()
    optimizer.step()
    return True


# ---------------------------------------------------------------- the worker process


def init_process(title: str, seed: int) -> None:
    """Per-process setup: a name in ps/top, one intra-op thread, Ctrl-C and hang-up left to the launcher, a seed."""
    from setproctitle import setproctitle

    setproctitle(title)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    torch.manual_seed(seed)


def build_model(num_actions: int, cfg: Config, device: torch.device) -> A3Clstm:
    """A process-local model; channels-last makes the convolutions markedly faster on CPUs (same numbers)."""
    model = A3Clstm(1, num_actions, cfg.hidden_size).to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def train_worker(rank: int, cfg: Config, shared_model, optimizer, counters: Counters, stop_event, parent_pid: int):
    """Process entry: run the worker, logging its rank and the error if it dies."""
    init_process(f"a3c train {rank}", cfg.seed + rank)
    logger = setup_logger(f"train{rank}", cfg.log_path("_log"))
    try:
        sys.exit(run_worker(rank, cfg, shared_model, optimizer, counters, stop_event, parent_pid, logger))
    except Exception:
        logger.exception("worker %d died", rank)
        sys.exit(1)


def run_worker(rank, cfg: Config, shared_model, optimizer, counters, stop_event, parent_pid, logger) -> int:
    device = cfg.device_for(rank)
    envs = [make_env_for(cfg) for _ in range(cfg.envs_per_worker)]
    model = build_model(envs[0].action_space.n, cfg, device)
    if optimizer is None:
        optimizer = make_optimizer(cfg.optimizer, shared_model.parameters(), cfg.lr, cfg.amsgrad, shared=False)
    link = SharedLink(shared_model, model, device)
    agent = Agent(model, envs, device, seed=cfg.seed + rank * cfg.envs_per_worker)
    steps = cfg.steps_for(rank)
    frames_per_rollout = round(steps * len(envs) * frames_per_step(envs[0]))
    bad_in_a_row = 0
    writer = tensorboard_writer(cfg) if rank == 0 else None
    try:
        while not stop_event.is_set() and os.getppid() == parent_pid:
            link.pull()
            rollout = collect_rollout(agent, steps, cfg.gamma, cfg.textbook, cfg.bf16)
            losses = rollout_losses(model, rollout, cfg)
            if apply_update(model, link, optimizer, losses.total, cfg.max_grad_norm):
                bad_in_a_row = 0
                counters.add(rank, frames_per_rollout, updates=1)
                if writer is not None and int(counters.table[1, rank]) % 10 == 0:
                    for name, value in losses._asdict().items():
                        writer.add_scalar(f"train/{name}", float(value), counters.frames)
                continue
            bad_in_a_row += 1
            counters.add(rank, frames_per_rollout, dropped=1)
            if bad_in_a_row >= cfg.max_nan_updates:
                logger.error("worker %d: %d non-finite updates in a row, stopping", rank, bad_in_a_row)
                return EXIT_NAN
    finally:
        agent.close()
        if writer is not None:
            writer.close()
    return 0


if __name__ == "__main__":
    logging.error("train.py is a worker module; start training with python main.py")
    sys.exit(2)
