"""Each wrapper's behaviour on real ALE games, and env-id handling."""

import warnings

import cv2
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


class Tap(gym.Wrapper):
    """Records every raw screen and action the ALE produces, and the lives left after each, under the
    toolkit's wrappers."""

    def __init__(self, env):
        super().__init__(env)
        self.events = []  # ("reset", frame, None) or ("step", frame, action)
        self.lives = []

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.events.append(("reset", obs.copy(), None))
        self.lives.append(self.unwrapped.ale.lives())
        return obs, info

    def step(self, action):
        obs, *rest = self.env.step(action)
        self.events.append(("step", obs.copy(), int(action)))
        self.lives.append(self.unwrapped.ale.lives())
        return (obs, *rest)


def tapped_make_env(monkeypatch, env_id, **kwargs):
    """make_env with a Tap right above the raw ALE env; returns (env, tap)."""
    taps = []
    make_base = E._make_base

    def make_tapped(env_id, render_mode):
        taps.append(Tap(make_base(env_id, render_mode)))
        return taps[-1]

    monkeypatch.setattr(E, "_make_base", make_tapped)
    env = E.make_env(env_id, **kwargs)
    return env, taps[0]


def pooled_by_hand(events):
    """The classic pooling from the raw screens alone: the max of the last three frames since the last reset,
    where the no-op start counts as one frame (its last) and FIRE and play frames all count."""
    history, starting = [], False
    for kind, frame, action in events:
        if kind == "reset":
            history, starting = [frame], True
        elif starting and action == 0:
            history = [frame]  # a no-op of the no-op start
        else:
            starting = False
            history.append(frame)
    return np.max(np.stack(history[-3:]), axis=0)


def frame_by_hand(rgb, crop):
    """Crop, 2x2 area average of the 8-bit RGB crop rounded half up, then 0.2989 R + 0.587 G + 0.114 B."""
    crop_rgb = rgb[crop["crop1"] : crop["crop2"] + 160, :160].astype(np.int64)
    assert crop_rgb.shape == (160, 160, 3), "by hand needs an exact 2x downscale"
    small = (crop_rgb.reshape(80, 2, 80, 2, 3).sum(axis=(1, 3)) + 2) // 4
    return small[..., 0] * 0.2989 + small[..., 1] * 0.587 + small[..., 2] * 0.114


class NormalizedByHand:
    """The running normalisation: bias-corrected exponential means of frame means and stds, alpha 0.9999."""

    def __init__(self):
        self.mean = self.std = 0.0
        self.count = 0

    def __call__(self, frame):
        self.count += 1
        self.mean = 0.9999 * self.mean + 0.0001 * frame.mean()
        self.std = 0.9999 * self.std + 0.0001 * frame.std()
        correction = 1 - 0.9999**self.count
        return (frame - self.mean / correction) / (self.std / correction + 1e-8)


@pytest.mark.parametrize("training", [True, False], ids=["training", "played"])
@pytest.mark.parametrize("env_id, skip, steps", [("PongNoFrameskip-v4", 4, 120), ("BreakoutNoFrameskip-v4", 2, 1500)])
def test_frames_equal_the_classic_pipeline_computed_by_hand(monkeypatch, env_id, skip, steps, training):
    """Every observation, after resets, lost lives and across step boundaries (skip 2 keeps a frame of the
    previous step in the max), equals the classic pipeline applied by hand to the raw ALE screens; a played
    game's normalisation starts anew with the game, training's runs on."""
    env, tap = tapped_make_env(monkeypatch, env_id, skip_rate=skip, training=training)
    crop = E.crop_for(env_id, E.load_env_config("config.json"))
    normalize = NormalizedByHand()
    rng = np.random.default_rng(0)

    def check(obs):
        expected = normalize(frame_by_hand(pooled_by_hand(tap.events), crop))
        assert obs.shape == (1, 80, 80) and obs.dtype == np.float32
        np.testing.assert_allclose(obs[0], expected, rtol=1e-4, atol=1e-4)

    obs, _ = env.reset(seed=3)
    check(obs)
    games = lives_lost = 0
    for _ in range(steps):
        obs, _, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        check(obs)
        if terminated or truncated:
            games += info["game_over"]
            lives_lost += not info["game_over"]
            obs, reset_info = env.reset()
            if reset_info["new_game"] and not training:
                normalize = NormalizedByHand()
            check(obs)
    assert sum(kind == "reset" for kind, _, _ in tap.events) == games + 1
    if env_id.startswith("Breakout"):
        assert games >= 1 and lives_lost >= 4, "the walk must cross lost lives and a real reset"


@pytest.mark.parametrize("skip", [1, 2])
def test_max_of_three_frames_is_kept_across_agent_steps(skip):
    """An observation is the max of the last three raw frames, whichever agent steps they came from; a reset
    starts the history again from its own frame (with skip 1, the first step's max is that frame's and one more)."""
    tap = Tap(gym.make("BreakoutNoFrameskip-v4"))
    env = E.MaxAndSkip(tap, skip=skip)
    for seed in (1, 2):
        env.reset(seed=seed)
        start = len(tap.events) - 1
        assert tap.events[start][0] == "reset"
        for action in [1, 2, 3, 0, 2, 2, 3, 1]:
            before = len(tap.events)
            obs, *_ = env.step(action)
            assert [a for _, _, a in tap.events[before:]] == [action] * skip
            frames = [frame for _, frame, _ in tap.events[start:]]
            np.testing.assert_array_equal(obs, np.max(np.stack(frames[-3:]), axis=0))


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


def frame_statistics_count_at_each_reset(training: bool) -> list[tuple[bool, int]]:
    """Random Breakout until two games end: (a new game?, frames the running statistics hold) after each reset."""
    env = E.make_env("BreakoutNoFrameskip-v4", training=training)
    env.reset(seed=0)
    after_seeded_reset = env.get_wrapper_attr("count")
    rng = np.random.default_rng(0)
    counts = []
    while sum(new for new, _ in counts) < 2:
        _, _, terminated, truncated, _ = env.step(int(rng.integers(4)))
        if terminated or truncated:
            _, info = env.reset()
            counts.append((info["new_game"], env.get_wrapper_attr("count")))
    assert after_seeded_reset == 1
    return counts


def test_played_games_start_their_frame_statistics_anew_and_training_carries_them():
    """A played game is standardised by its own frames, as in gym_eval's fresh env per game; a lost life
    carries them on; training carries them across games, as the classic tool does."""
    played, trained = frame_statistics_count_at_each_reset(False), frame_statistics_count_at_each_reset(True)
    assert [new for new, _ in played] == [new for new, _ in trained] == [False] * 4 + [True] + [False] * 4 + [True]
    played_counts, trained_counts = [c for _, c in played], [c for _, c in trained]
    assert [c for (new, c) in played if new] == [1, 1]
    assert all(b > a for a, b, (new, _) in zip(played_counts, played_counts[1:], played[1:]) if not new)
    assert all(b > a for a, b in zip(trained_counts, trained_counts[1:]))


def test_evaluation_plays_with_the_same_life_semantics_as_training():
    """As in the classic tool, a lost life ends the episode in evaluation too; only the clipping differs."""
    train, play = E.make_env("BreakoutNoFrameskip-v4"), E.make_env("BreakoutNoFrameskip-v4", training=False)
    assert wrappers(train)[1:] == wrappers(play)
    assert wrappers(train)[0] == "ClipReward" and "EpisodicLife" in wrappers(play)


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
    assert "MaxAndSkip" not in wrappers(env) and "NoopReset" not in wrappers(env)
    assert E.frames_per_step(env) == 4


# gym's original registration of every id family: (frame skip, sticky-action probability)
ID_FAMILIES = {
    "Pong-v0": ((2, 5), 0.25),
    "Pong-v4": ((2, 5), 0.0),
    "PongDeterministic-v0": (4, 0.25),
    "PongDeterministic-v4": (4, 0.0),
    "SpaceInvadersDeterministic-v4": (3, 0.0),
    "PongNoFrameskip-v0": (1, 0.25),
    "PongNoFrameskip-v4": (1, 0.0),
    "ALE/Pong-v5": (4, 0.25),
}


@pytest.mark.parametrize("env_id", ID_FAMILIES)
def test_each_id_family_matches_gyms_registration(env_id):
    skip, sticky = ID_FAMILIES[env_id]
    env = E.make_env(env_id)
    assert env.unwrapped._frameskip == skip
    assert env.unwrapped.ale.getFloat("repeat_action_probability") == pytest.approx(sticky)
    assert not env.unwrapped._action_set or env.action_space.n < 18, "minimal action set"


@pytest.mark.parametrize("env_id", ["PongNoFrameskip-v4", "BreakoutDeterministic-v4", "ALE/Pong-v5"])
@pytest.mark.parametrize("training", [True, False])
def test_built_envs_pass_gymnasiums_checker(env_id, training):
    from gymnasium.utils.env_checker import check_env

    env = E.make_env(env_id, training=training)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its advice to check the unwrapped env
        check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    for _ in range(50):
        assert env.observation_space.contains(obs)
        obs, *_ = env.step(env.action_space.sample())


def test_noframeskip_ids_get_skip_rate_and_frame_count():
    env = E.make_env("PongNoFrameskip-v4", skip_rate=3)
    assert "MaxAndSkip" in wrappers(env) and E.frames_per_step(env) == 3
    assert E.frames_per_step(E.make_env("ALE/Pong-v5")) == 4


def test_preprocess_crops_by_config_then_resizes_and_grays():
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
    raw[100:110, 70:90] = (200, 100, 50)
    raw[101, 71] = (7, 9, 250)
    np.testing.assert_allclose(wrapper.observation(raw)[0], frame_by_hand(raw, config["Pong"]), rtol=1e-6)
    assert wrapper.observation(raw).max() == pytest.approx(0.2989 * 200 + 0.587 * 100 + 0.114 * 50)


def test_a_config_entry_s_dimension2_is_the_classic_s_first_resize_height():
    raw = np.random.default_rng(0).integers(0, 256, (210, 160, 3), dtype=np.uint8)
    base = gym.make("AsteroidsNoFrameskip-v4")
    tall = {"crop1": 16, "crop2": 34, "dimension2": 94}
    crop = raw[16:194, :160]
    first = cv2.resize(crop, (80, 94), interpolation=cv2.INTER_AREA)
    expected = cv2.resize(first, (80, 80), interpolation=cv2.INTER_AREA) @ E.GRAY_WEIGHTS
    np.testing.assert_allclose(E.Preprocess(base, tall).observation(raw)[0], expected, rtol=1e-6)
    direct = E.Preprocess(base, {"crop1": 16, "crop2": 34}).observation(raw)
    assert not np.allclose(direct[0], expected)  # the extra step changes the frame
    np.testing.assert_array_equal(direct, E.Preprocess(base, {**tall, "dimension2": 80}).observation(raw))


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
