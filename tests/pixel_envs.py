"""Small pixel environments of our own, registered for tests through gymnasium's "module:EnvId" syntax.

`python main.py --env tests.pixel_envs:Cue-v0` trains on the cue task with the full pipeline.
"""

import gymnasium as gym
import numpy as np

SIZE = 80


class CueEnv(gym.Env):
    """A lit square on the left or the right half; the right action names that side.

    Each episode has `length` steps with +1 for every correct choice, so the optimum is `length`
    and a uniform policy gets half of it.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, length: int = 20, reward: float = 1.0, render_mode=None):
        self.length = length
        self.reward_value = reward
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(2)

    def _frame(self) -> np.ndarray:
        frame = np.zeros((SIZE, SIZE, 3), np.uint8)
        left = 10 + 40 * self.side
        frame[30:50, left : left + 20] = 255
        return frame

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.side = int(self.np_random.integers(2))
        return self._frame(), {}

    def step(self, action):
        reward = self.reward_value if int(action) == self.side else 0.0
        self.t += 1
        self.side = int(self.np_random.integers(2))
        return self._frame(), reward, self.t >= self.length, False, {}

    def render(self):
        return self._frame()


class RecallEnv(CueEnv):
    """The cue is shown only on the first frame; after `delay` blank frames the action must name its side.

    Reward 1 for the right side at the end, so the optimum is 1 and a memoryless policy gets 0.5:
    only the LSTM can carry the cue across the blank frames.
    """

    def __init__(self, delay: int = 10, render_mode=None):
        super().__init__(length=delay + 1, render_mode=render_mode)

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self.cue = self.side
        return obs, info

    def step(self, action):
        self.t += 1
        done = self.t >= self.length
        reward = float(int(action) == self.cue) if done else 0.0
        return np.zeros((SIZE, SIZE, 3), np.uint8), reward, done, False, {}


class BadFrameEnv(CueEnv):
    """The cue task, but after a few steps a frame that is not an image arrives: a process that crashes."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return (None if self.t > 3 else obs), reward, terminated, truncated, info


class ContinuousCueEnv(CueEnv):
    """The cue task with a continuous action space, which A3C-LSTM here cannot drive."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


gym.register("Cue-v0", entry_point=CueEnv)
gym.register("Recall-v0", entry_point=RecallEnv)
gym.register("BadFrame-v0", entry_point=BadFrameEnv)
gym.register("NanReward-v0", entry_point=CueEnv, kwargs={"reward": float("nan")})
gym.register("ContinuousCue-v0", entry_point=ContinuousCueEnv)
