"""Whole games as the classic tool plays them: every life, FIRE after each lost life, the LSTM state zeroed."""

import numpy as np
import torch

import environment as E
from agent import Agent, EnvBatch, play_game
from model import A3Clstm
from tests.test_environment import tapped_make_env

CPU = torch.device("cpu")
MAX_STEPS = 10000


def noop_model(num_actions, hidden_size=32):
    """A greedy policy that always chooses NOOP: it never presses FIRE itself."""
    torch.manual_seed(0)
    model = A3Clstm(1, num_actions, hidden_size)
    with torch.no_grad():
        model.actor_linear.weight.zero_()
        model.actor_linear.bias.copy_(torch.eye(num_actions)[0])
    return model.eval()


def test_breakout_game_presses_fire_after_each_lost_life_and_ends_at_game_over(monkeypatch):
    env, tap = tapped_make_env(monkeypatch, "BreakoutNoFrameskip-v4", training=False, max_episode_length=MAX_STEPS)
    agent = Agent(noop_model(env.action_space.n), [env], CPU, seed=4)
    assert env.unwrapped.ale.lives() == 5
    reward, length, info = play_game(agent)
    assert info["game_over"] and info["lives"] == 0
    assert length < MAX_STEPS / 5, "a game that stands still runs into the step limit"
    game_over = max(i for i, (kind, _, _) in enumerate(tap.events) if kind == "reset")  # the next game's reset
    events = tap.events[:game_over]
    fire_frames = [i for i, (kind, _, action) in enumerate(events) if kind == "step" and action == 1]
    assert len(fire_frames) == 5 * 4, "FIRE for one agent step (4 frames) at the start and after each of 4 lost lives"
    assert sorted({tap.lives[i - 1] for i in fire_frames}, reverse=True) == [5, 4, 3, 2, 1]
    assert reward >= 0


def test_lstm_state_is_zeroed_at_each_lost_life_in_evaluation():
    env = E.make_env("BreakoutNoFrameskip-v4", training=False, max_episode_length=MAX_STEPS)
    model = noop_model(env.action_space.n)
    agent = Agent(model, [env], CPU, seed=4)
    state_norms, lives = [], [env.unwrapped.ale.lives()]
    model.lstm.register_forward_pre_hook(lambda _m, args: state_norms.append(float(args[1][0].abs().sum())))
    reward, length, info = play_game(agent, on_step=lambda: lives.append(env.unwrapped.ale.lives()))
    assert info["game_over"] and len(state_norms) == length
    lost = [step for step in range(1, length) if lives[step] < lives[step - 1]]
    assert len(lost) == 4
    zeroed = [step for step in range(length) if state_norms[step] == 0.0]
    assert zeroed == [0, *lost], "the LSTM starts from zero at the game's start and after each lost life, only there"


def test_sampled_actions_follow_the_policy_s_softmax():
    from agent import sample_actions

    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5]]).expand(200_000, 4).contiguous()
    counts = torch.bincount(sample_actions(logits), minlength=4).double() / len(logits)
    torch.testing.assert_close(counts, torch.softmax(logits[0].double(), 0), atol=4e-3, rtol=0)
    assert sample_actions(torch.tensor([[0.0, -1e9, -1e9]])).item() == 0  # a near-zero probability is not taken


def test_explore_replaces_an_epsilon_share_of_actions_with_uniform_ones():
    from agent import explore

    torch.manual_seed(0)
    greedy = torch.zeros(200_000, dtype=torch.long)
    assert explore(greedy, 4, 0.0) is greedy
    for epsilon in (0.1, 1.0):
        counts = torch.bincount(explore(greedy, 4, epsilon), minlength=4).double() / len(greedy)
        expected = torch.full((4,), epsilon / 4, dtype=torch.double)
        expected[0] += 1 - epsilon  # a random action may be the greedy one
        torch.testing.assert_close(counts, expected, atol=4e-3, rtol=0)


def test_a_game_the_time_limit_ends_inside_the_reset_after_a_lost_life_is_reported_alone():
    """A short cap meets the no-op or FIRE steps of a reset after a lost life: the game ends there and a new
    one starts inside the reset. Its score and length are reported as one game, not added to the next."""
    cap = 26
    batch = EnvBatch([E.make_env("BreakoutNoFrameskip-v4", training=False, max_episode_length=cap)], seed=1)
    rng = np.random.default_rng(1)
    lengths, steps = [], 300
    for _ in range(steps):
        lengths += [length for _, _, length, _ in batch.step(rng.integers(0, 4, size=1)).finished]
    batch.close()
    assert len(lengths) >= 8 and max(lengths) <= cap, lengths
    assert sum(lengths) + int(batch.game_length[0]) == steps
