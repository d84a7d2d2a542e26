"""Environment creation: the one place that builds and wraps every env the toolkit plays.

Atari ids get rl_a3c_pytorch's preprocessing, step for step, so that its models play here as they
did there and models trained here play there: on frame-skip-1 ids no-op starts and a frame skip
whose observation is the max of the last three raw frames; episodic life; FIRE after every reset;
crop, 80x80 area resize of the RGB crop, grayscale; running normalisation. Training adds reward
clipping and carries the normalisation's statistics across games; played games (the test process,
evaluation) start them anew with each game. Otherwise all see the same frames and the same life
semantics. Any other gymnasium env with image observations and discrete actions gets
the resize, grayscale and normalisation only.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections import deque
from functools import cache

import ale_py
import cv2
import gymnasium as gym
import numpy as np

from settings import Config
from utils import UsageError

gym.register_envs(ale_py)
ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)

FRAME_SIZE = 80
DETERMINISTIC_ID = re.compile(r"^(?P<game>[A-Za-z0-9]+)Deterministic-(?P<version>v[04])$")
# gym's registration of the Deterministic ids, which ale-py >= 0.11 no longer registers: a fixed frame
# skip (3 for SpaceInvaders, whose lasers blink with period 4), sticky actions on v0 only.
DETERMINISTIC_SKIP = {"SpaceInvaders": 3}
STICKY_ACTIONS = {"v0": 0.25, "v4": 0.0}


class NoopReset(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Start each game with 1..noop_max no-ops so that greedy play does not see one fixed start.

    Frame-skip-1 ids only, as in the classic tool: the other ids skip frames inside ALE.
    """

    def __init__(self, env: gym.Env, noop_max: int = 30):
        gym.utils.RecordConstructorArgs.__init__(self, noop_max=noop_max)
        super().__init__(env)
        self.noop_max = noop_max

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        for _ in range(self.unwrapped.np_random.integers(1, self.noop_max + 1)):
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset()
        return obs, info


class MaxAndSkip(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Repeat each action `skip` frames and sum the rewards; observe the max of the last three raw frames.

    The max hides Atari flicker. As in rl_a3c_pytorch, the three frames are kept across agent steps
    and cleared only on reset (where the reset frame starts the history): models trained on these
    frames play far worse on a max of two (Pong: 20 against 10).
    """

    def __init__(self, env: gym.Env, skip: int):
        gym.utils.RecordConstructorArgs.__init__(self, skip=skip)
        super().__init__(env)
        self.skip = skip
        self._frames: deque[np.ndarray] = deque(maxlen=3)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._frames.clear()
        self._frames.append(obs)
        return obs, info

    def step(self, action):
        total = 0.0
        terminated = truncated = False
        info = {}
        for _ in range(self.skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            self._frames.append(obs)
            total += float(reward)
            if terminated or truncated:
                break
        return np.max(np.stack(self._frames), axis=0), total, terminated, truncated, info


class EpisodicLife(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """A lost life ends the episode (faster credit assignment); the game resets only on game over.

    Used in training and in play alike, as the classic tool does: after a lost life the agent's LSTM
    state starts from zero and FIRE is pressed again, while the game and its score go on.
    `info["game_over"]` tells a lost life from the end of the game. A seeded reset starts a new game.
    A reset's `info["new_game"]` says whether it started one: the game can also end inside the reset after
    a lost life (the time limit reached on its no-op), and whoever adds up a game's score must know.
    """

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self.unwrapped.ale.lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        info["game_over"] = self.game_over
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs):
        new_game = self.game_over or kwargs.get("seed") is not None
        if new_game:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
                new_game = True
        self.game_over = False
        self.lives = self.unwrapped.ale.lives()
        return obs, {**info, "new_game": new_game}


class FireReset(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Press FIRE after every reset: games like Breakout stand still until it is pressed. The reset's
    `info["new_game"]` (EpisodicLife) stays true if any reset inside it started a new game."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        super().__init__(env)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        new_game = info.get("new_game", True)
        for action in (1, 2):
            obs, _, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
                new_game = new_game or info.get("new_game", True)
        return obs, {**info, "new_game": new_game}


class KeepScreen(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Keep the RGB screen after each step as `screen`. A vector env resets an env whose game ended in the
    same step, so a render() after that step shows the next game's first screen; this one is taken before.
    With `keeping` off it renders nothing: an env built to record may play some games unrecorded."""

    def __init__(self, env: gym.Env):
        assert env.render_mode == "rgb_array", "KeepScreen renders RGB arrays"
        gym.utils.RecordConstructorArgs.__init__(self)
        super().__init__(env)
        self.screen = None
        self.keeping = True

    def step(self, action):
        result = self.env.step(action)
        self.screen = self.env.render() if self.keeping else None
        return result


GRAY_WEIGHTS = np.array([0.2989, 0.587, 0.114], np.float32)


class Preprocess(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """The classic tool's frame: crop (Atari screens), area-resize the 8-bit RGB crop to 80x80 (through 80 wide
    and `dimension2` high first, where a game's entry sets it otherwise), then grayscale with 0.2989 R +
    0.587 G + 0.114 B as float32 in [0, 255] (normalisation follows)."""

    def __init__(self, env: gym.Env, crop: dict | None):
        gym.utils.RecordConstructorArgs.__init__(self, crop=crop)
        super().__init__(env)
        self.crop = crop
        base = env.observation_space
        low, high = float(np.min(base.low)), float(np.max(base.high))
        self.observation_space = gym.spaces.Box(low, high, (1, FRAME_SIZE, FRAME_SIZE), np.float32)

    def observation(self, frame):
        if self.crop is not None:
            frame = frame[self.crop["crop1"] : self.crop["crop2"] + 160, :160]
        if frame.dtype not in (np.uint8, np.float32, np.float64):
            frame = frame.astype(np.float32)
        height = self.crop.get("dimension2", FRAME_SIZE) if self.crop is not None else FRAME_SIZE
        if height != FRAME_SIZE:  # the classic's first resize to 80 wide, `dimension2` high (Asteroids: 94)
            frame = cv2.resize(frame, (FRAME_SIZE, height), interpolation=cv2.INTER_AREA)
        frame = cv2.resize(frame, (FRAME_SIZE, FRAME_SIZE), interpolation=cv2.INTER_AREA)
        if frame.ndim == 3:
            frame = frame @ GRAY_WEIGHTS if frame.shape[2] == 3 else frame.mean(axis=2)
        return frame.astype(np.float32).reshape(1, FRAME_SIZE, FRAME_SIZE)


class NormalizeObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Standardise frames by a bias-corrected running mean/std of frame means and stds (as the classic tool).

    In training the statistics run on across episodes and games, as in the classic tool. In played games
    (`per_game`) they start anew with each game, as in a fresh env: carried on, a game that ALE ends after
    27,000 steps of the ball looping over a cleared Breakout wall leaves statistics under which the next
    games scored 0-22 instead of 314-415 (docs/benchmarks.md). A seeded reset starts them anew, so that
    `reset(seed=s)` gives the same frames every time.
    """

    def __init__(self, env: gym.Env, alpha: float = 0.9999, per_game: bool = False):
        gym.utils.RecordConstructorArgs.__init__(self, alpha=alpha, per_game=per_game)
        super().__init__(env)
        shape = env.observation_space.shape
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape, np.float32)  # standardised: unbounded
        self.alpha = alpha
        self.per_game = per_game
        self.mean = 0.0
        self.std = 0.0
        self.count = 0

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if kwargs.get("seed") is not None or (self.per_game and info.get("new_game", True)):
            self.mean = self.std = 0.0
            self.count = 0
        return self.observation(obs), info

    def observation(self, obs):
        self.count += 1
        self.mean = self.mean * self.alpha + float(obs.mean()) * (1 - self.alpha)
        self.std = self.std * self.alpha + float(obs.std()) * (1 - self.alpha)
        correction = 1 - self.alpha**self.count
        return ((obs - self.mean / correction) / (self.std / correction + 1e-8)).astype(np.float32)


class ClipReward(gym.RewardWrapper, gym.utils.RecordConstructorArgs):
    """Clip training rewards to [-1, 1] so one learning rate fits every game."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        super().__init__(env)

    def reward(self, reward):
        return float(np.clip(reward, -1.0, 1.0))


TOOLKIT_DIR = os.path.dirname(os.path.abspath(__file__))


def find_env_config(path: str) -> str:
    """`path` as given where it exists, else beside the toolkit's files (so config.json is found from any folder)."""
    beside = os.path.join(TOOLKIT_DIR, path)
    return beside if not os.path.isabs(path) and not os.path.exists(path) and os.path.exists(beside) else path


@cache
def load_env_config(path: str) -> dict:
    """Read the per-game crop table; every problem is a UsageError naming the file."""
    path = find_env_config(path)
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"env config {path} not found: pass --env-config with the path to config.json") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"env config {path} is not valid JSON ({e.msg} at line {e.lineno}): fix the file") from None
    if not isinstance(config, dict) or "Default" not in config:
        raise UsageError(f'env config {path} has no "Default" entry: add one with crop1 and crop2')
    for name, entry in config.items():
        missing = [k for k in ("crop1", "crop2") if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise UsageError(f'env config {path}: entry "{name}" lacks {", ".join(missing)}: add them')
        height = entry.get("dimension2", FRAME_SIZE)
        if not isinstance(height, int) or isinstance(height, bool) or height < 1:
            raise UsageError(f'env config {path}: entry "{name}" has dimension2 {height!r}: make it a positive integer')
    return config


def crop_for(env_id: str, config: dict) -> dict:
    """The config entry whose name is the longest substring of the env id, else "Default"."""
    matches = [name for name in config if name != "Default" and name in env_id]
    return config[max(matches, key=len)] if matches else config["Default"]


def _make_base(env_id: str, render_mode: str | None) -> gym.Env:
    """gym.make with the classic Deterministic ids rebuilt on the current ALE env."""
    kwargs = {"render_mode": render_mode}
    classic = DETERMINISTIC_ID.match(env_id)
    if classic:
        env_id = f"ALE/{classic['game']}-v5"
        kwargs.update(
            frameskip=DETERMINISTIC_SKIP.get(classic["game"], 4),
            repeat_action_probability=STICKY_ACTIONS[classic["version"]],
            full_action_space=False,
        )
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as e:
        raise UsageError(_unknown_env_message(env_id, e)) from None
    except ModuleNotFoundError as e:
        raise UsageError(f"cannot import module {e.name!r} named in env id {env_id!r}") from None


def _unknown_env_message(env_id: str, error: Exception) -> str:
    known = list(gym.registry) + [f"{g}Deterministic-v4" for g in _ale_games()]
    close = difflib.get_close_matches(env_id, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see gymnasium.pprint_registry() for the ids"
    return f"unknown env id {env_id!r} ({error}): {hint}"


def _ale_games() -> list[str]:
    return [k[: -len("NoFrameskip-v4")] for k in gym.registry if k.endswith("NoFrameskip-v4")]


def is_atari(env: gym.Env) -> bool:
    return isinstance(env.unwrapped, ale_py.AtariEnv)


def frames_per_step(env: gym.Env) -> float:
    """Emulator frames one agent step advances, for counting frames the way Atari papers do."""
    while isinstance(env, gym.Wrapper):
        if isinstance(env, MaxAndSkip):
            return float(env.skip)
        env = env.env
    if not is_atari(env):
        return 1.0
    skip = env.unwrapped._frameskip
    return float(skip) if isinstance(skip, int) else (skip[0] + skip[1] - 1) / 2


def make_env(
    env_id: str,
    *,
    env_config: str = Config.env_config,
    skip_rate: int = Config.skip_rate,
    max_episode_length: int = Config.max_episode_length,
    training: bool = True,
    render_mode: str | None = None,
) -> gym.Env:
    """Build `env_id` with the preprocessing that training, testing and evaluation share.

    `training` clips rewards and carries the frame statistics across games; played games report real
    scores and standardise each game's frames by that game's statistics alone. An episode ends at a lost
    life (Atari), a game at game over; `max_episode_length` caps a game's agent steps.
    """
    config = load_env_config(env_config)
    env = _make_base(env_id, render_mode)
    check_spaces(env, env_id)
    atari = is_atari(env)
    if atari and env.unwrapped._frameskip == 1:
        env = MaxAndSkip(NoopReset(env), skip_rate)
    env = gym.wrappers.TimeLimit(env, max_episode_steps=max_episode_length)
    if atari:
        env = EpisodicLife(env)
        if "FIRE" in env.unwrapped.get_action_meanings():
            env = FireReset(env)
    env = Preprocess(env, crop_for(env_id, config) if atari else None)
    env = NormalizeObservation(env, per_game=not training)
    if training:
        env = ClipReward(env)
    if render_mode == "rgb_array":
        env = KeepScreen(env)
    return env


def make_env_for(settings, training: bool = True, render_mode: str | None = None) -> gym.Env:
    """make_env with a run's settings (anything with env, env_config, skip_rate, max_episode_length)."""
    return make_env(
        settings.env,
        env_config=settings.env_config,
        skip_rate=settings.skip_rate,
        max_episode_length=settings.max_episode_length,
        training=training,
        render_mode=render_mode,
    )


def check_spaces(env: gym.Env, env_id: str) -> None:
    """The model needs image observations (HxW or HxWxC) and a discrete action set."""
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(act_space, gym.spaces.Discrete):
        raise UsageError(f"{env_id} has {type(act_space).__name__} actions; A3C here needs a Discrete action space")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) not in (2, 3):
        raise UsageError(f"{env_id} observations are {obs_space}, not images; choose an env with pixel observations")


def describe_env(env_id: str, env_config: str) -> int:
    """Build the env once to check it before any process starts; return its number of actions."""
    env = make_env(env_id, env_config=env_config)
    try:
        return int(env.action_space.n)
    finally:
        env.close()
