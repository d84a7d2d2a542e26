"""The worker's update: gradient hand-off on every update, fast path == textbook path, non-finite drops."""

from dataclasses import replace

import pytest
import torch

from agent import Agent
from environment import make_env
from hogwild import SharedLink
from model import A3Clstm
from settings import Config
from train import ACTING_PATHS, apply_update, collect_rollout, rollout_losses

CPU = torch.device("cpu")


def shared_and_local(hidden=32, actions=2):
    torch.manual_seed(0)
    shared = A3Clstm(1, actions, hidden).share_memory()
    local = A3Clstm(1, actions, hidden)
    return shared, local


def test_every_fresh_gradient_reaches_the_shared_parameters():
    shared, local = shared_and_local()
    link = SharedLink(shared, local, CPU)
    optimizer = torch.optim.SGD(shared.parameters(), lr=1.0)
    x = torch.randn(2, 1, 80, 80)
    for scale in (1.0, -3.0, 0.5):
        link.pull()
        before = [p.detach().clone() for p in shared.parameters()]
        value, logits, _ = local(x, local.initial_state(2, CPU))
        loss = scale * (value.sum() + logits.pow(2).sum())
        assert apply_update(local, link, optimizer, loss, max_grad_norm=0)
        fresh = [p.grad.clone() for p in local.parameters()]
        for p, b, g in zip(shared.parameters(), before, fresh):
            torch.testing.assert_close(p.detach(), b - g)


def test_non_finite_update_is_dropped_and_never_reaches_the_shared_model():
    shared, local = shared_and_local()
    link = SharedLink(shared, local, CPU)
    optimizer = torch.optim.SGD(shared.parameters(), lr=1.0)
    before = [p.detach().clone() for p in shared.parameters()]
    for bad, max_norm in ((float("nan"), 40), (float("inf"), 0)):
        value, _, _ = local(torch.randn(1, 1, 80, 80), local.initial_state(1, CPU))
        assert not apply_update(local, link, optimizer, value.sum() * bad, max_grad_norm=max_norm)
    for p, b in zip(shared.parameters(), before):
        assert torch.equal(p, b) and p.grad is None


def test_gradient_clipping_caps_the_norm():
    shared, local = shared_and_local()
    link = SharedLink(shared, local, CPU)
    optimizer = torch.optim.SGD(shared.parameters(), lr=1.0)
    value, _, _ = local(torch.randn(1, 1, 80, 80), local.initial_state(1, CPU))
    assert apply_update(local, link, optimizer, 1e6 * value.sum(), max_grad_norm=0.5)
    norm = torch.nn.utils.get_total_norm([p.grad for p in shared.parameters() if p.grad is not None])
    assert abs(float(norm) - 0.5) < 1e-4


def test_batched_replay_gives_the_textbook_gradient():
    """The fast path replays the LSTM over the rollout in one pass; its gradient equals the per-step autograd one."""
    cfg = Config(env="tests.pixel_envs:Cue-v0", hidden_size=32)
    torch.manual_seed(0)
    model = A3Clstm(1, 2, 32)
    envs = [make_env(cfg.env, max_episode_length=15) for _ in range(2)]
    agent = Agent(model, envs, CPU, seed=5)
    collect_rollout(agent, 6, cfg.gamma)  # start mid-episode with a live LSTM state
    rollout = collect_rollout(agent, 25, cfg.gamma, ACTING_PATHS["textbook"])  # crosses episode ends
    assert rollout.dones.sum() >= 2 and rollout.starts.sum() >= 2

    textbook = rollout_losses(model, rollout, cfg, ACTING_PATHS["textbook"])
    model.zero_grad()
    textbook.total.backward(retain_graph=True)  # the fast loss below backpropagates through the same convolutions
    textbook_grads = [p.grad.clone() for p in model.parameters()]

    fast_rollout = replace(rollout, kept=rollout.kept[:1])  # the same steps' features, as the fast path keeps them
    fast = rollout_losses(model, fast_rollout, cfg, ACTING_PATHS["fast"])
    model.zero_grad()
    fast.total.backward()
    torch.testing.assert_close(fast.total, textbook.total, atol=1e-4, rtol=1e-5)
    for a, b in zip(model.parameters(), textbook_grads):
        torch.testing.assert_close(a.grad, b, atol=1e-4, rtol=1e-3)


def test_recomputed_convolutions_give_the_same_rollout_loss_and_gradient():
    """--replay-convs acts without autograd and recomputes the convolutions in one pass at the update: with the
    same seeds it plays the same actions, and its loss and gradient equal the fast path's."""
    cfg = Config(env="tests.pixel_envs:Cue-v0", hidden_size=32, bf16="off")  # the agents below act in fp32
    torch.manual_seed(0)
    model = A3Clstm(1, 2, 32)
    results = {}
    for replay_convs in (False, True):
        path = ACTING_PATHS["replay" if replay_convs else "fast"]
        agent = Agent(model, [make_env(cfg.env, max_episode_length=15) for _ in range(2)], CPU, seed=5)
        torch.manual_seed(1)
        collect_rollout(agent, 6, cfg.gamma, path)
        rollout = collect_rollout(agent, 25, cfg.gamma, path)
        assert rollout.kept[0].shape[2:] == ((1, 80, 80) if replay_convs else (1024,))  # frames, or features
        losses = rollout_losses(model, rollout, cfg, path)
        model.zero_grad()
        losses.total.backward()
        results[replay_convs] = rollout, losses.total, [p.grad.clone() for p in model.parameters()]
    (fast, fast_loss, fast_grads), (replay, replay_loss, replay_grads) = results[False], results[True]
    assert replay.dones.sum() >= 2 and torch.equal(replay.actions, fast.actions)
    assert torch.equal(replay.starts, fast.starts) and torch.equal(replay.rewards, fast.rewards)
    torch.testing.assert_close(replay_loss, fast_loss, atol=1e-4, rtol=1e-5)
    for a, b in zip(replay_grads, fast_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_truncated_episode_bootstraps_from_the_critic_terminated_does_not():
    cfg = Config(env="tests.pixel_envs:Cue-v0", hidden_size=32)
    model = A3Clstm(1, 2, 32)
    torch.manual_seed(0)
    truncating = Agent(model, [make_env(cfg.env, max_episode_length=3, training=False)], CPU, seed=1)
    rollout = collect_rollout(truncating, 3, cfg.gamma)
    assert rollout.dones[2, 0] == 1

    torch.manual_seed(0)  # the same game step by step: r + gamma * V(final frame, LSTM state after the step)
    replay = Agent(model, [make_env(cfg.env, max_episode_length=3, training=False)], CPU, seed=1)
    with torch.no_grad():
        for _ in range(3):
            actions, _, _ = replay.act(greedy=False, features=replay.features())
            result = replay.step(actions)
        assert result.truncated[0] and not result.terminated[0]
        value, _, _ = model(torch.as_tensor(result.final_obs[0]).unsqueeze(0), replay.state)
    expected = float(result.rewards[0]) + cfg.gamma * float(value)
    assert abs(float(rollout.rewards[2, 0]) - expected) < 1e-6, (float(rollout.rewards[2, 0]), expected)
    assert abs(float(value)) > 1e-4, "a zero critic would not tell a bootstrap from none"

    terminating = Agent(model, [make_env(cfg.env, max_episode_length=100, training=False)], CPU, seed=1)
    rollout = collect_rollout(terminating, 20, cfg.gamma)
    assert rollout.dones[19, 0] == 1 and rollout.rewards[19, 0] in (0.0, 1.0)


@pytest.mark.parametrize("replay_convs", ["off", "auto"])
def test_bf16_convolutions_train_a_few_finite_updates(replay_convs):
    from run_setup import build_run
    from train import Worker

    cfg = Config(
        env="tests.pixel_envs:Cue-v0", hidden_size=32, bf16="on", workers=1, num_steps=5, replay_convs=replay_convs
    )
    torch.manual_seed(0)
    run = build_run(cfg, 2, None, logger=None)
    worker = Worker(0, run)
    assert worker.path.name == {"off": "fast", "auto": "replay"}[replay_convs]
    conv_dtypes, lstm_dtypes = set(), set()
    worker.model.conv1.register_forward_hook(lambda module, args, out: conv_dtypes.add(out.dtype))
    worker.model.lstm.register_forward_hook(lambda module, args, out: lstm_dtypes.add(out[0].dtype))
    before = [p.detach().clone() for p in run.model.parameters()]
    try:
        for _ in range(3):
            applied, losses = worker.update()
            assert applied and torch.isfinite(losses.total)
    finally:
        worker.close()
    assert conv_dtypes == {torch.bfloat16} and lstm_dtypes == {torch.float32}
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    assert sum(not torch.equal(p, b) for p, b in zip(run.model.parameters(), before)) >= len(before) - 1


def test_a_worker_clips_to_max_grad_norm_and_lays_out_its_model_as_asked():
    from run_setup import build_run
    from train import Worker

    for channels_last in (True, False):
        cfg = Config(
            env="tests.pixel_envs:Cue-v0",
            hidden_size=32,
            workers=1,
            num_steps=5,
            max_grad_norm=1e-3,
            channels_last=channels_last,
        )
        worker = Worker(0, build_run(cfg, 2, None, logger=None))
        try:
            assert worker.update()[0]
        finally:
            worker.close()
        local = torch.nn.utils.get_total_norm([p.grad for p in worker.model.parameters() if p.grad is not None])
        shared = torch.nn.utils.get_total_norm([p.grad for p in worker.run.model.parameters() if p.grad is not None])
        assert float(local) <= 1e-3 * (1 + 1e-4) and torch.isclose(shared, local)
        weight = worker.model.conv2.weight
        assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_the_seed_sets_the_shared_model_s_initial_weights_and_leaves_the_caller_s_random_state():
    from run_setup import build_run

    def weights(seed):
        return [p.detach().clone() for p in build_run(Config(seed=seed), 6, None, logger=None).model.parameters()]

    state = torch.random.get_rng_state()
    first, again, other = weights(1), weights(1), weights(2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("bf16", [False, True])
def test_test_games_act_in_the_workers_precision(bf16):
    from agent import encode
    from test import build_test_agent

    cfg = Config(env="tests.pixel_envs:Cue-v0", bf16="on" if bf16 else "off", hidden_size=32)
    agent = build_test_agent(cfg, make_env(cfg.env, training=False), CPU, seed=1)
    with torch.no_grad():
        value, _, _ = agent.forward()
        expected, _, _ = agent.model.recur(encode(agent.model, agent.obs, bf16), agent.state)
        other, _, _ = agent.model.recur(encode(agent.model, agent.obs, not bf16), agent.state)
    assert torch.equal(value, expected) and not torch.equal(value, other)
    agent.close()


@pytest.mark.parametrize("save_max", [False, True])
def test_the_test_process_saves_the_shared_weights_of_now_or_with_save_max_those_that_played(
    tmp_path, monkeypatch, save_max
):
    """Without --save-max the checkpoint's weights are the shared ones at the save, which match the optimizer
    statistics, frames and time saved beside them; with --save-max they are the weights that scored."""
    import logging
    import os

    import test
    from agent import play_game
    from checkpoint import load_checkpoint
    from run_setup import build_run

    cfg = Config(env="tests.pixel_envs:Cue-v0", workers=1, hidden_size=32, test_interval=0, save_max=save_max)
    cfg = replace(cfg, log_dir=str(tmp_path), save_model_dir=str(tmp_path))
    logger = logging.getLogger("test-process")
    run = replace(build_run(cfg, make_env(cfg.env).action_space.n, None, logger), parent_pid=os.getppid())
    played = []

    def play_then_a_worker_updates(agent, **kwargs):
        game = play_game(agent, **kwargs)
        played.append({k: v.clone() for k, v in agent.model.state_dict().items()})
        with torch.no_grad():
            for p in run.model.parameters():  # a worker's update lands while the game is played
                p.add_(0.01)
        run.stop.set()
        return game

    monkeypatch.setattr(test, "play_game", play_then_a_worker_updates)
    test.run_tests(run, logger, seed=1)
    saved = load_checkpoint(cfg.checkpoint_path()).model
    expected = played[0] if save_max else run.model.state_dict()
    assert len(played) == 1 and all(torch.equal(saved[k], expected[k]) for k in saved)
    assert not all(torch.equal(played[0][k], run.model.state_dict()[k]) for k in saved)
