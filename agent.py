"""The agent: the recurrent policy (Agent) acting in K environments (EnvBatch). Training, testing and evaluation
all step through it; the network's step is one function, policy_step."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from model import A3Clstm


def encode(model: A3Clstm, frames: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """The convolutional features [N, 1024] of frames [N, C, H, W], in fp32; `bf16` runs the convolutions
    under bfloat16 autocast. Its weight-cast cache is off: each weight is cast once per call anyway, and
    a cache would outlive a CUDA graph's capture (ActingGraph)."""
    with torch.autocast(frames.device.type, torch.bfloat16, enabled=bf16, cache_enabled=False):
        return model.features(frames).float()


def policy_step(model: A3Clstm, frames, starts, state: tuple, bf16: bool = False, features=None):
    """The network's step: value, logits and next LSTM state for `frames` (or their given convolutional
    features) from `state`, zeroed where `starts` is 1, as A3Clstm.unroll replays it over a rollout."""
    if features is None:
        features = encode(model, frames, bf16)
    keep = (1.0 - starts).unsqueeze(1)
    hx, cx = state
    return model.recur(features, (hx * keep, cx * keep))


def sample_actions(logits: torch.Tensor) -> torch.Tensor:
    """One action per row, drawn from softmax(logits), by the Gumbel-max trick: argmax(logits + G) with
    G = -log(E), E ~ Exp(1), is distributed as softmax(logits). Seven aten operations, where torch.multinomial
    over the softmax runs forty-six (its input checks), two of them .item() waits on a GPU."""
    return (logits - torch.empty_like(logits).exponential_().log()).argmax(dim=1)


def explore(actions: torch.Tensor, num_actions: int, epsilon: float) -> torch.Tensor:
    """`actions` with each replaced, with probability `epsilon`, by one drawn uniformly from all `num_actions`
    (DQN's evaluation protocol). A deterministic env and a greedy policy can repeat a state cycle until the
    game's time limit (a Breakout ball that bounces in a loop hitting no brick); a rare random action breaks it."""
    if epsilon <= 0:
        return actions
    explored = torch.rand(actions.shape, device=actions.device) < epsilon
    return torch.where(explored, torch.randint_like(actions, num_actions), actions)


def describe_policy(sampled: bool, epsilon: float) -> str:
    """How games choose their actions, for a log line."""
    policy = "sampled" if sampled else "greedy"
    return f"{policy} (epsilon {epsilon:g})" if epsilon else policy


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` (on the CPU) on `device`. To a GPU through pinned memory, without waiting: the caching host
    allocator keeps the pinned block until the copy has run, and the stream orders the copy before its use."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class ActingGraph:
    """One acting step's forward (convolutions, LSTM step, heads) captured as a CUDA graph.

    Eagerly, an acting step launches some forty small kernels, and the host's time to launch them,
    not the GPU's to run them, bounds A3G's frames/s; a replay launches them all at once. The graph
    reads fixed input buffers and the model's parameters where they lie (SharedLink.pull copies into
    them in place), so a call copies its inputs in and clones the outputs out: it behaves as the eager
    `forward` it captured, a pure function of (frames, starts, (hx, cx)).
    """

    def __init__(self, forward, obs: torch.Tensor, starts: torch.Tensor, state: tuple):
        self.forward = forward  # (frames, starts, state) -> (value, logits, state)
        self.inputs = [obs.clone(), starts.clone(), state[0].clone(), state[1].clone()]
        device = obs.device
        # Warm-up and capture on one side stream: lazily created per-stream handles and workspaces (cuBLAS,
        # cuDNN) then exist before the capture, which may not create them.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(3):
                self._run()
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph, stream=side):
            self.outputs = self._run()
        torch.cuda.current_stream(device).wait_stream(side)

    def _run(self):
        obs, starts, hx, cx = self.inputs
        value, logits, (hx, cx) = self.forward(obs, starts, (hx, cx))
        return value, logits, hx, cx

    def __call__(self, obs: torch.Tensor, starts: torch.Tensor, state: tuple):
        for buffer, value in zip(self.inputs, (obs, starts, *state)):
            buffer.copy_(value)
        self.graph.replay()
        value, logits, hx, cx = (out.clone() for out in self.outputs)
        return value, logits, (hx, cx)


@dataclass
class StepResult:
    rewards: np.ndarray  # [K] float32
    terminated: np.ndarray  # [K] bool
    truncated: np.ndarray  # [K] bool
    final_obs: dict  # env index -> last frame of an episode that was truncated (for bootstrapping)
    finished: list  # (env index, game reward, game length, info) of whole games that ended


class EnvBatch:
    """K environments stepped together, with the classic tool's episode semantics, and their whole-game totals.

    gymnasium's SyncVectorEnv with same-step autoreset does the stepping: an env whose episode ends is reset in
    the same step, its last frame kept in info["final_obs"] (for the truncation bootstrap). An episode ends at a
    lost life; the env's reset then presses on with the same game (environment.EpisodicLife), so a game's score
    and length add up here over its episodes until `game_over`, or until a reset says it had to start a new game
    (`new_game`: the old one ended inside the reset), as the classic tool reports them. Env i is
    seeded with seed + i at the start; later resets are unseeded, as in the classic tool.
    """

    def __init__(self, envs: list[gym.Env], seed: int):
        self.vector = SyncVectorEnv([lambda env=env: env for env in envs], autoreset_mode=AutoresetMode.SAME_STEP)
        self.obs, _ = self.vector.reset(seed=[seed + i for i in range(len(envs))])
        self.game_reward = np.zeros(len(envs))
        self.game_length = np.zeros(len(envs), dtype=np.int64)

    @property
    def envs(self) -> list[gym.Env]:
        return self.vector.envs

    def step(self, actions: np.ndarray) -> StepResult:
        """Apply one action per env; envs whose episode ends start the next one (see the class docstring)."""
        self.obs, rewards, terminated, truncated, info = self.vector.step(actions)
        self.game_reward += rewards
        self.game_length += 1
        final_obs, finished = {}, []
        new_game = info.get("new_game", np.ones(len(self.game_length), bool))  # the resets that had to start a new game
        for i in np.flatnonzero(terminated | truncated):
            if truncated[i] and not terminated[i]:
                final_obs[i] = info["final_obs"][i]
            final = {key: value[i] for key, value in info["final_info"].items() if not key.startswith("_")}
            if final.get("game_over", True) or new_game[i]:
                finished.append((int(i), float(self.game_reward[i]), int(self.game_length[i]), final))
                self.game_reward[i] = 0.0
                self.game_length[i] = 0
        return StepResult(rewards.astype(np.float32), terminated, truncated, final_obs, finished)

    def close(self) -> None:
        self.vector.close()


class Agent:
    """The recurrent policy acting in an EnvBatch: the current frames on the device, the LSTM state, and which
    envs start an episode (their state is zeroed by multiplying with `1 - starts`, the arithmetic
    A3Clstm.unroll replays a rollout with)."""

    def __init__(
        self,
        model: A3Clstm,
        envs: list[gym.Env],
        device: torch.device,
        seed: int,
        bf16: bool = False,
        cuda_graph: bool = False,
    ):
        self.model = model
        self.device = device
        self.bf16 = bf16
        self.batch = EnvBatch(envs, seed)
        self.obs = self._upload(self.batch.obs)
        self.state = model.initial_state(len(envs), device)
        self.starts = torch.ones(len(envs), device=device)
        self.graph = ActingGraph(self._step, self.obs, self.starts, self.state) if cuda_graph else None

    @property
    def envs(self) -> list[gym.Env]:
        return self.batch.envs

    def _upload(self, frames: np.ndarray) -> torch.Tensor:
        """A new tensor each step: the rollout's convolution graphs still hold the previous frames."""
        return to_device(torch.from_numpy(frames), self.device)

    def _step(self, frames: torch.Tensor, starts: torch.Tensor, state: tuple):
        return policy_step(self.model, frames, starts, state, self.bf16)

    def features(self) -> torch.Tensor:
        """The convolutional features [K, 1024] of the current frames (the default acting path keeps their graph)."""
        return encode(self.model, self.obs, self.bf16)

    def forward(self, features: torch.Tensor | None = None):
        """Value, logits and next LSTM state for the current frames (or their given features); does not change
        the agent. Without autograd and given no features, a CUDA-graphed agent replays its graph."""
        if features is None and self.graph is not None and not torch.is_grad_enabled():
            return self.graph(self.obs, self.starts, self.state)
        return policy_step(self.model, self.obs, self.starts, self.state, self.bf16, features)

    def act(self, greedy: bool, features: torch.Tensor | None = None, epsilon: float = 0.0):
        """Advance the LSTM on the current frames and choose actions: argmax, or sampled from the policy; with
        `epsilon`, some of them uniformly at random instead (see explore)."""
        value, logits, self.state = self.forward(features)
        actions = logits.argmax(dim=1) if greedy else sample_actions(logits)
        return explore(actions, logits.shape[1], epsilon), value, logits

    def step(self, actions: torch.Tensor) -> StepResult:
        """Play `actions` in the envs; envs whose episode ended are marked as starting anew."""
        result = self.batch.step(actions.cpu().numpy())
        self.obs = self._upload(self.batch.obs)
        self.starts = to_device(
            torch.from_numpy((result.terminated | result.truncated).astype(np.float32)), self.device
        )
        return result

    def value_of(self, frame: np.ndarray, index: int) -> float:
        """Critic's value of a frame env `index` ended on, from its current LSTM state (truncation bootstrap)."""
        hx, cx = (s[index : index + 1] for s in self.state)
        x = torch.as_tensor(frame, device=self.device).unsqueeze(0)
        with torch.no_grad():
            value, _, _ = self.model.recur(encode(self.model, x, self.bf16), (hx, cx))
        return float(value)

    def detach_state(self) -> None:
        self.state = tuple(s.detach() for s in self.state)

    def close(self) -> None:
        self.batch.close()


def play_game(agent: Agent, greedy: bool = True, should_stop=lambda: False, on_step=None, epsilon: float = 0.0):
    """Play env 0 until its game ends (all lives); return (reward, length, info), or None if asked to stop first."""
    while not should_stop():
        with torch.no_grad():
            actions, _, _ = agent.act(greedy, epsilon=epsilon)
        result = agent.step(actions)
        if on_step is not None:
            on_step()
        for index, reward, length, info in result.finished:
            if index == 0:
                return reward, length, info
    return None
