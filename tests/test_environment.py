"""Each wrapper's behaviour on real ALE games, and env-id handling."""

import gymnasium as gym
import numpy as np
import pytest

import environment as E
from utils import UsageError, safe_name


def wrappers(env):
    names = []
    while isinstance(env, gym.Wrapper):
        names.append(type(env).__name__)
        env = env.env
    return names


def test_noop_reset_starts_after_1_to_30_noops():
    env = E.NoopReset(gym.make("PongNoFrameskip-v4"))
    starts = set()
    for seed in range(12):
        env.reset(seed=seed)
        frame = env.unwrapped.ale.getEpisodeFrameNumber()
        assert 1 <= frame <= 30
        starts.add(frame)
    assert len(starts) > 3


def test_max_and_skip_repeats_action_and_max_pools_last_two_frames():
    raw = gym.make("BreakoutNoFrameskip-v4")
    skipped = E.MaxAndSkip(gym.make("BreakoutNoFrameskip-v4"), skip=4)
    raw.reset(seed=3)
    skipped.reset(seed=3)
    for action in [1, 2, 3, 0, 2, 2, 3]:
        frames, total = [], 0.0
        for _ in range(4):
            obs, reward, *_ = raw.step(action)
            frames.append(obs)
            total += reward
        obs, reward, *_ = skipped.step(action)
        np.testing.assert_array_equal(obs, np.maximum(frames[-2], frames[-1]))
        assert reward == total
    assert skipped.unwrapped.ale.getEpisodeFrameNumber() == 7 * 4


def test_lost_life_ends_training_episode_but_not_the_game():
    env = E.make_env("BreakoutNoFrameskip-v4", training=True)
    env.reset(seed=0)
    ale = env.unwrapped.ale
    assert ale.lives() == 5
    rng = np.random.default_rng(0)
    episodes = 0
    while True:
        _, _, terminated, truncated, info = env.step(int(rng.integers(4)))
        if not (terminated or truncated):
            continue
        episodes += 1
        if info["game_over"]:
            break
        lives_left = ale.lives()
        frame_before = ale.getEpisodeFrameNumber()
        env.reset()
        assert ale.lives() == lives_left, "a lost life must not reset the game"
        assert ale.getEpisodeFrameNumber() > frame_before
    assert episodes == 5
    env.reset()
    assert ale.lives() == 5 and ale.getEpisodeFrameNumber() < 200


def test_evaluation_episode_is_a_whole_game():
    env = E.make_env("BreakoutNoFrameskip-v4", training=False)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    while True:
        _, _, terminated, truncated, _ = env.step(int(rng.integers(4)))
        if terminated or truncated:
            break
    assert env.unwrapped.ale.lives() == 0


def test_fire_reset_launches_the_ball():
    def screens_change(env):
        env.reset(seed=1)
        first = env.unwrapped.ale.getScreenRGB().copy()
        for _ in range(40):
            env.step(0)
        return not np.array_equal(first, env.unwrapped.ale.getScreenRGB())

    assert not screens_change(gym.make("BreakoutNoFrameskip-v4")), "without FIRE Breakout stands still"
    assert screens_change(E.FireReset(gym.make("BreakoutNoFrameskip-v4")))
    assert "FireReset" in wrappers(E.make_env("BreakoutNoFrameskip-v4"))
    assert "FireReset" not in wrappers(E.make_env("MsPacmanNoFrameskip-v4"))


@pytest.mark.parametrize(
    "env_id",
    [
        "PongNoFrameskip-v4",
        "Pong-v4",
        "Pong-v0",
        "Pong-v0",
        "ALE/Pong-v5",
        "PongDeterministic-v4",
        "PongDeterministic-v0",
        "BreakoutDeterministic-v4",
    ],
)
def test_every_ale_id_builds_and_yields_80x80_float_frames(env_id):
    env = E.make_env(env_id)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (1, 80, 80) and obs.dtype == np.float32
    obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert obs.shape == (1, 80, 80) and obs.dtype == np.float32
    assert -1.0 <= reward <= 1.0


def test_deterministic_ids_are_the_classic_definition():
    env = E.make_env("PongDeterministic-v4")
    ale = env.unwrapped.ale
    assert env.unwrapped._frameskip == 4
    assert ale.getFloat("repeat_action_probability") == 0.0
    assert env.action_space.n == 6
    assert "MaxAndSkip" not in wrappers(env)
    assert E.frames_per_step(env) == 4


def test_noframeskip_ids_get_skip_rate_and_frame_count():
    env = E.make_env("PongNoFrameskip-v4", skip_rate=3)
    assert "MaxAndSkip" in wrappers(env) and E.frames_per_step(env) == 3
    assert E.frames_per_step(E.make_env("ALE/Pong-v5")) == 4


def test_preprocess_crops_by_config_then_grays_and_resizes():
    config = E.load_env_config("config.json")
    assert E.crop_for("PongNoFrameskip-v4", config) == config["Pong"]
    assert E.crop_for("ALE/SpaceInvaders-v5", config) == config["SpaceInvaders"]
    assert E.crop_for("SomethingElse-v0", config) == config["Default"]
    raw = np.zeros((210, 160, 3), np.uint8)
    raw[:34] = 255  # Pong's score bar: cropped away
    wrapper = E.Preprocess(gym.make("PongNoFrameskip-v4"), config["Pong"])
    frame = wrapper.observation(raw)
    assert frame.shape == (1, 80, 80) and frame.dtype == np.float32
    assert frame.max() == 0.0
    raw[100:110, 70:90] = 255
    assert wrapper.observation(raw).max() > 0.5


def test_truncation_at_max_episode_length():
    env = E.make_env("MsPacmanNoFrameskip-v4", max_episode_length=5)
    env.reset(seed=0)
    results = [env.step(0)[2:4] for _ in range(5)]
    assert results[-1] == (False, True)
    assert all(r == (False, False) for r in results[:-1])


def test_reward_clipping_only_in_training():
    env = E.ClipReward(gym.make("tests.pixel_envs:Cue-v0", reward=5.0))
    env.reset(seed=0)
    assert {env.step(a)[1] for a in (0, 1) for _ in range(10)} == {0.0, 1.0}


def test_custom_image_env_through_module_syntax():
    env = E.make_env("tests.pixel_envs:Cue-v0")
    assert wrappers(env)[:3] == ["ClipReward", "NormalizeObservation", "Preprocess"]
    obs, _ = env.reset(seed=0)
    assert obs.shape == (1, 80, 80)
    assert E.frames_per_step(env) == 1


@pytest.mark.parametrize(
    "env_id, words",
    [
        ("PongNoFrameskp-v4", "did you mean PongNoFrameskip-v4"),
        ("CartPole-v1", "not images"),
        ("tests.pixel_envs:ContinuousCue-v0", "Discrete"),
        ("nosuchmodule:Foo-v0", "cannot import module"),
    ],
)
def test_unusable_env_ids_are_usage_errors(env_id, words):
    with pytest.raises(UsageError, match=words):
        E.make_env(env_id)


def test_safe_names():
    assert safe_name("ALE/Pong-v5") == "ALE_Pong-v5"
    assert safe_name("tests.pixel_envs:Cue-v0") == "tests.pixel_envs_Cue-v0"
