"""Model shapes, initialisation, the classic checkpoint layout, and the batched replay."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoint import load_checkpoint
from model import A3Clstm

CLASSIC_KEYS = {
    f"{layer}.{kind}"
    for layer in ("conv1", "conv2", "conv3", "conv4", "critic_linear", "actor_linear")
    for kind in ("weight", "bias")
} | {"lstm.weight_ih", "lstm.weight_hh", "lstm.bias_ih", "lstm.bias_hh"}


class ClassicA3Clstm(nn.Module):
    """rl_a3c_pytorch's network as that tool defines it (separate max-pool modules, tuple input)."""

    def __init__(self, num_inputs, num_actions):
        super().__init__()
        self.conv1 = nn.Conv2d(num_inputs, 32, 5, stride=1, padding=2)
        self.maxp1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(32, 32, 5, stride=1, padding=1)
        self.maxp2 = nn.MaxPool2d(2, 2)
        self.conv3 = nn.Conv2d(32, 64, 4, stride=1, padding=1)
        self.maxp3 = nn.MaxPool2d(2, 2)
        self.conv4 = nn.Conv2d(64, 64, 3, stride=1, padding=1)
        self.maxp4 = nn.MaxPool2d(2, 2)
        self.lstm = nn.LSTMCell(1024, 512)
        self.critic_linear = nn.Linear(512, 1)
        self.actor_linear = nn.Linear(512, num_actions)

    def forward(self, inputs):
        x, (hx, cx) = inputs
        x = F.relu(self.maxp1(self.conv1(x)))
        x = F.relu(self.maxp2(self.conv2(x)))
        x = F.relu(self.maxp3(self.conv3(x)))
        x = F.relu(self.maxp4(self.conv4(x)))
        hx, cx = self.lstm(x.view(x.size(0), -1), (hx, cx))
        return self.critic_linear(hx), self.actor_linear(hx), (hx, cx)


def test_shapes():
    model = A3Clstm(1, 6, hidden_size=256)
    value, logits, (hx, cx) = model(torch.randn(3, 1, 80, 80), model.initial_state(3, torch.device("cpu")))
    assert value.shape == (3,) and logits.shape == (3, 6) and hx.shape == cx.shape == (3, 256)


def test_parameter_names_match_the_classic_tool():
    assert set(A3Clstm(1, 6).state_dict()) == CLASSIC_KEYS


def test_initialisation():
    torch.manual_seed(0)
    model = A3Clstm(1, 6)
    for conv in (model.conv1, model.conv2, model.conv3, model.conv4):
        assert torch.all(conv.bias == 0)
    torch.testing.assert_close(model.actor_linear.weight.norm(dim=1), torch.full((6,), 0.01))
    torch.testing.assert_close(model.critic_linear.weight.norm(dim=1), torch.ones(1))
    assert torch.all(model.actor_linear.bias == 0) and torch.all(model.critic_linear.bias == 0)
    w_hh = model.lstm.weight_hh
    torch.testing.assert_close(w_hh.T @ w_hh, torch.eye(512), atol=1e-4, rtol=0)
    forget = model.lstm.bias_ih[512:1024]
    assert torch.all(forget == 1) and model.lstm.bias_ih.sum() == 512 and torch.all(model.lstm.bias_hh == 0)
    bound = (6 / (1 * 25 + 32 * 25)) ** 0.5 * 2**0.5
    assert model.conv1.weight.abs().max() <= bound


def test_classic_state_dict_loads_unchanged_and_computes_the_same(tmp_path):
    classic = ClassicA3Clstm(1, 6)
    path = tmp_path / "Pong-v0.dat"
    torch.save(classic.state_dict(), path)
    ckpt = load_checkpoint(str(path))
    assert ckpt.optimizer is None and ckpt.num_actions == 6 and ckpt.hidden_size == 512
    model = A3Clstm(1, 6)
    model.load_state_dict(ckpt.model)
    x = torch.randn(2, 1, 80, 80)
    state = (torch.randn(2, 512), torch.randn(2, 512))
    v1, l1, (h1, c1) = classic((x, state))
    v2, l2, (h2, c2) = model(x, state)
    torch.testing.assert_close(v1.squeeze(1), v2)
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(h1, h2)


def test_unroll_equals_step_by_step_forward_with_resets():
    torch.manual_seed(0)
    model = A3Clstm(1, 4, hidden_size=64)
    steps, envs = 7, 3
    frames = torch.randn(steps, envs, 1, 80, 80)
    starts = torch.zeros(steps, envs)
    starts[3, 1] = starts[5, 0] = 1.0
    state = (torch.randn(envs, 64), torch.randn(envs, 64))
    features = model.features(frames.flatten(0, 1)).view(steps, envs, -1)
    values, logits = model.unroll(features, state, starts)
    hx, cx = state
    for t in range(steps):
        keep = (1 - starts[t]).unsqueeze(1)
        value, step_logits, (hx, cx) = model(frames[t], (hx * keep, cx * keep))
        torch.testing.assert_close(values[t], value, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits[t], step_logits, atol=1e-5, rtol=1e-5)


def test_lstm_sequence_gradients_are_exact():
    from model import LSTMSequence

    torch.manual_seed(0)
    steps, batch, hidden = 4, 2, 3
    projected = torch.randn(steps, batch, 4 * hidden, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(batch, hidden, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(batch, hidden, dtype=torch.float64, requires_grad=True)
    keep = torch.ones(steps, batch, 1, dtype=torch.float64)
    keep[2, 0] = 0.0
    weight = torch.randn(4 * hidden, hidden, dtype=torch.float64, requires_grad=True)
    sequence = lambda p, h, c, w: LSTMSequence.apply(p, h, c, keep, w)  # noqa: E731
    assert torch.autograd.gradcheck(sequence, (projected, h0, c0, weight))
