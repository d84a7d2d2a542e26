"""Returns, GAE and the A3C loss against hand computations."""

import math

import torch

from train import a3c_loss, gae, n_step_returns

G, TAU = 0.9, 0.5


def col(*xs):
    return torch.tensor(xs, dtype=torch.float32).unsqueeze(1)


def test_n_step_returns_bootstrap_from_the_critic():
    returns = n_step_returns(col(1, 0, 2), col(0, 0, 0), torch.tensor([10.0]), G)
    expected = [1 + G * 0 + G**2 * 2 + G**3 * 10, 0 + G * 2 + G**2 * 10, 2 + G * 10]
    torch.testing.assert_close(returns.squeeze(1), torch.tensor(expected))


def test_n_step_returns_stop_at_an_episode_end():
    returns = n_step_returns(col(1, 0, 2), col(0, 1, 0), torch.tensor([10.0]), G)
    torch.testing.assert_close(returns.squeeze(1), torch.tensor([1 + G * 0, 0.0, 2 + G * 10]))


def test_n_step_returns_without_bootstrap():
    returns = n_step_returns(col(1, 1), col(0, 1), torch.tensor([10.0]), G)
    torch.testing.assert_close(returns.squeeze(1), torch.tensor([1 + G, 1.0]))


def test_gae_by_hand():
    rewards, values, bootstrap = col(1, 0, 2), col(0.5, 1.0, 1.5), torch.tensor([3.0])
    d2 = 2 + G * 3.0 - 1.5
    d1 = 0 + G * 1.5 - 1.0
    d0 = 1 + G * 1.0 - 0.5
    a2, a1 = d2, d1 + G * TAU * d2
    a0 = d0 + G * TAU * a1
    adv = gae(rewards, values, col(0, 0, 0), bootstrap, G, TAU)
    torch.testing.assert_close(adv.squeeze(1), torch.tensor([a0, a1, a2]))


def test_gae_with_an_episode_end_and_tau_one_equals_returns_minus_values():
    rewards, values, dones, bootstrap = col(1, 0, 2, 1), col(0.5, 1.0, 1.5, 0.2), col(0, 1, 0, 0), torch.tensor([3.0])
    adv = gae(rewards, values, dones, bootstrap, G, 1.0)
    returns = n_step_returns(rewards, dones, bootstrap, G)
    torch.testing.assert_close(adv, returns - values)
    assert math.isclose(float(adv[1, 0]), 0 - 1.0)


def test_a3c_loss_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0)]], [[0.0, 0.0]]])  # probs [.25, .75] then [.5, .5]
    values = col(1.0, 2.0)
    actions = torch.tensor([[1], [0]])
    returns, adv = col(2.0, 1.0), col(0.5, -1.0)
    losses = a3c_loss(logits, values, actions, returns, adv, entropy_coef=0.01, value_coef=0.5)
    h0 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    h1 = math.log(2)
    policy = -(math.log(0.75) * 0.5 + math.log(0.5) * -1.0) - 0.01 * (h0 + h1)
    value = 0.5 * ((2 - 1) ** 2 + (1 - 2) ** 2)
    assert math.isclose(float(losses.policy), policy, rel_tol=1e-6)
    assert math.isclose(float(losses.value), value, rel_tol=1e-6)
    assert math.isclose(float(losses.total), policy + 0.5 * value, rel_tol=1e-6)
    assert math.isclose(float(losses.entropy), (h0 + h1) / 2, rel_tol=1e-6)


def test_k_envs_with_different_episode_ends_are_each_their_own_column():
    """[T, K] with K=3 envs ending at different steps: each column equals the same computation on that env
    alone, and the loss averages the per-env sums over K."""
    rewards = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0], [2.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.1, -0.2], [1.0, 0.3, 0.0], [1.5, -0.4, 0.7], [0.2, 0.6, 0.1]])
    dones = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    bootstrap = torch.tensor([3.0, -1.0, 0.5])
    returns = n_step_returns(rewards, dones, bootstrap, G)
    adv = gae(rewards, values, dones, bootstrap, G, TAU)
    for k in range(3):
        one = (rewards[:, k : k + 1], dones[:, k : k + 1], bootstrap[k : k + 1])
        torch.testing.assert_close(returns[:, k : k + 1], n_step_returns(*one, G))
        alone = gae(rewards[:, k : k + 1], values[:, k : k + 1], one[1], one[2], G, TAU)
        torch.testing.assert_close(adv[:, k : k + 1], alone)
    # env 1 ends at its last step: no bootstrap reaches its last return; env 2 ends twice
    torch.testing.assert_close(returns[:, 1], torch.tensor([0 + G * 2 + G**2 * 0 + G**3 * 1, 2 + G * 0 + G**2, G, 1]))
    torch.testing.assert_close(returns[:, 2], torch.tensor([-1.0, 0 + G * 1, 1.0, 0 + G * 0.5]))
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 2)
    actions = torch.tensor([[0, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 1]])
    total = a3c_loss(logits, values, actions, returns, adv, 0.01, 0.5)
    per_env = [
        a3c_loss(
            logits[:, k : k + 1],
            values[:, k : k + 1],
            actions[:, k : k + 1],
            returns[:, k : k + 1],
            adv[:, k : k + 1],
            0.01,
            0.5,
        )
        for k in range(3)
    ]
    for field in ("policy", "value", "total"):
        expected = sum(float(getattr(loss, field)) for loss in per_env) / 3
        assert math.isclose(float(getattr(total, field)), expected, rel_tol=1e-5)
