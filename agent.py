"""The agent: a model acting in K environments. Training, testing and evaluation all step through it."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from model import A3Clstm


def encode(model: A3Clstm, frames: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """The convolutional features [N, 1024] of frames [N, C, H, W], in fp32; `bf16` runs the convolutions
    under bfloat16 autocast. Its weight-cast cache is off: each weight is cast once per call anyway, and
    a cache would outlive a CUDA graph's capture (ActingGraph)."""
    with torch.autocast(frames.device.type, torch.bfloat16, enabled=bf16, cache_enabled=False):
        return model.features(frames).float()


def sample_actions(logits: torch.Tensor) -> torch.Tensor:
    """One action per row, drawn from softmax(logits), by the Gumbel-max trick: argmax(logits + G) with
    G = -log(E), E ~ Exp(1), is distributed as softmax(logits). Four operations, where torch.multinomial
    over the softmax dispatches about forty; on a GPU each is a launch the host pays for."""
    return (logits - torch.empty_like(logits).exponential_().log()).argmax(dim=1)


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
        self.forward = forward
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


class Agent:
    """Holds the current frames, LSTM state and running game totals of K envs.

    An episode ends at a lost life or at the end of the game; the env is then reset (after a lost
    life that is a no-op and FIRE, the game goes on) and the LSTM state is zeroed by multiplying
    with `1 - starts`, the same arithmetic `A3Clstm.unroll` uses to replay a rollout. Scores and
    lengths add up over a whole game, as the classic tool reports them.
    """

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
        self.envs = envs
        self.device = device
        self.bf16 = bf16
        k = len(envs)
        first = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
        self.obs = self._upload(first)
        self.state = model.initial_state(k, device)
        self.starts = torch.ones(k, device=device)
        self.game_reward = np.zeros(k)
        self.game_length = np.zeros(k, dtype=np.int64)
        self.graph = ActingGraph(self._forward, self.obs, self.starts, self.state) if cuda_graph else None

    def _upload(self, frames: np.ndarray) -> torch.Tensor:
        """A new tensor each step: the rollout's convolution graphs still hold the previous frames."""
        return to_device(torch.from_numpy(frames), self.device)

    def encode(self) -> torch.Tensor:
        """The convolutional features [K, 1024] of the current frames."""
        return encode(self.model, self.obs, self.bf16)

    def _forward(self, obs: torch.Tensor, starts: torch.Tensor, state: tuple, features: torch.Tensor | None = None):
        """Value, logits and next LSTM state for frames `obs` (or their given features) from `state`,
        zeroed where `starts` is 1."""
        if features is None:
            features = encode(self.model, obs, self.bf16)
        keep = (1.0 - starts).unsqueeze(1)
        hx, cx = state
        return self.model.recur(features, (hx * keep, cx * keep))

    def forward(self, features: torch.Tensor | None = None):
        """Value, logits and next LSTM state for the current frames (or their given features); does not change
        the agent. Without autograd and given no features, a CUDA-graphed agent replays its graph."""
        if features is None and self.graph is not None and not torch.is_grad_enabled():
            return self.graph(self.obs, self.starts, self.state)
        return self._forward(self.obs, self.starts, self.state, features)

    def act(self, greedy: bool, features: torch.Tensor | None = None):
        """Advance the LSTM on the current frames and choose actions: argmax, or sampled from the policy."""
        value, logits, self.state = self.forward(features)
        actions = logits.argmax(dim=1) if greedy else sample_actions(logits)
        return actions, value, logits

    def step(self, actions: torch.Tensor) -> StepResult:
        """Apply one action per env; envs whose episode ends are reset and marked as starting anew."""
        k = len(self.envs)
        rewards = np.zeros(k, dtype=np.float32)
        terminated = np.zeros(k, dtype=bool)
        truncated = np.zeros(k, dtype=bool)
        frames, final_obs, finished = [], {}, []
        for i, (env, action) in enumerate(zip(self.envs, actions.tolist())):
            obs, reward, terminated[i], truncated[i], info = env.step(action)
            rewards[i] = reward
            self.game_reward[i] += reward
            self.game_length[i] += 1
            if terminated[i] or truncated[i]:
                if truncated[i] and not terminated[i]:
                    final_obs[i] = obs
                if info.get("game_over", True):
                    finished.append((i, float(self.game_reward[i]), int(self.game_length[i]), info))
                    self.game_reward[i] = 0.0
                    self.game_length[i] = 0
                obs, _ = env.reset()
            frames.append(obs)
        self.obs = self._upload(np.stack(frames))
        self.starts = to_device(torch.from_numpy((terminated | truncated).astype(np.float32)), self.device)
        return StepResult(rewards, terminated, truncated, final_obs, finished)

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
        for env in self.envs:
            env.close()


def play_game(agent: Agent, greedy: bool = True, should_stop=lambda: False, on_step=None):
    """Play env 0 until its game ends (all lives); return (reward, length, info), or None if asked to stop first."""
    while not should_stop():
        with torch.no_grad():
            actions, _, _ = agent.act(greedy)
        result = agent.step(actions)
        if on_step is not None:
            on_step()
        for index, reward, length, info in result.finished:
            if index == 0:
                return reward, length, info
    return None
