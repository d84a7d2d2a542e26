"""The A3C-LSTM network, parameter names identical to rl_a3c_pytorch so its state_dicts load unchanged."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def normalized_columns_(weight: torch.Tensor, std: float) -> None:
    """Random rows scaled to norm `std`: small actor logits (near-uniform policy), unit-scale critic."""
    with torch.no_grad():
        out = torch.randn_like(weight)
        weight.copy_(out * std / out.pow(2).sum(1, keepdim=True).sqrt())


class A3Clstm(nn.Module):
    """Four conv+maxpool layers, an LSTM cell and linear critic/actor heads, for 1x80x80 frames."""

    def __init__(self, num_inputs: int, num_actions: int, hidden_size: int = 512):
        super().__init__()
        self.conv1 = nn.Conv2d(num_inputs, 32, 5, stride=1, padding=2)
        self.conv2 = nn.Conv2d(32, 32, 5, stride=1, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 4, stride=1, padding=1)
        self.conv4 = nn.Conv2d(64, 64, 3, stride=1, padding=1)
        self.lstm = nn.LSTMCell(1024, hidden_size)
        self.critic_linear = nn.Linear(hidden_size, 1)
        self.actor_linear = nn.Linear(hidden_size, num_actions)
        self.hidden_size = hidden_size
        self.reset_parameters()

    def reset_parameters(self) -> None:
        relu_gain = nn.init.calculate_gain("relu")
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            nn.init.xavier_uniform_(conv.weight, gain=relu_gain)
            nn.init.zeros_(conv.bias)
        normalized_columns_(self.actor_linear.weight, 0.01)
        normalized_columns_(self.critic_linear.weight, 1.0)
        nn.init.zeros_(self.actor_linear.bias)
        nn.init.zeros_(self.critic_linear.bias)
        nn.init.xavier_uniform_(self.lstm.weight_ih)
        nn.init.orthogonal_(self.lstm.weight_hh)
        nn.init.zeros_(self.lstm.bias_ih)
        nn.init.zeros_(self.lstm.bias_hh)
        with torch.no_grad():
            self.lstm.bias_ih[self.hidden_size : 2 * self.hidden_size].fill_(1.0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, 80, 80] frames -> [N, 1024] features."""
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.relu(F.max_pool2d(conv(x), 2, 2))
        return x.flatten(1)

    def initial_state(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = torch.zeros(batch, self.hidden_size, device=device)
        return zeros, zeros.clone()

    def forward(self, x, state):
        """One step: frames [N, C, H, W] and (hx, cx) -> value [N], logits [N, A], new (hx, cx)."""
        return self.recur(self.features(x), state)

    def recur(self, features, state):
        """One step after the convolutions: features [N, 1024] and (hx, cx) -> value, logits, new (hx, cx)."""
        hx, cx = self.lstm(features, state)
        return self.critic_linear(hx).squeeze(1), self.actor_linear(hx), (hx, cx)

    def unroll(self, features, state, starts):
        """Replay `recur` over a rollout in one pass: the LSTM's input projection batched over all T*K
        steps, the recurrence step by step (see LSTMSequence), the heads batched.

        features [T, K, 1024], starts [T, K] (1.0 where a new episode begins: the hidden state is
        zeroed there, exactly as the acting loop zeroes it) -> values [T, K], logits [T, K, A].
        """
        lstm = self.lstm
        projected = F.linear(features, lstm.weight_ih, lstm.bias_ih + lstm.bias_hh)
        keep = (1.0 - starts).unsqueeze(2)
        hidden = LSTMSequence.apply(projected, state[0], state[1], keep, lstm.weight_hh)
        return self.critic_linear(hidden).squeeze(2), self.actor_linear(hidden)


class LSTMSequence(torch.autograd.Function):
    """nn.LSTMCell's recurrence over T steps, with the state multiplied by `keep` before each step.

    Autograd through a Python loop of LSTMCells computes the weight gradient as T rank-K products and
    adds them one by one; this backward collects the gate gradients of all steps and computes it with
    one matrix product, as cuDNN does. What does not depend on the recurrence (the gates' derivatives)
    is computed for all steps at once, so that each step launches a handful of operations: on a GPU the
    host pays for every launch. Inputs: projected [T, K, 4H] (x W_ih^T + b_ih + b_hh), h0, c0 [K, H],
    keep [T, K, 1], weight_hh [4H, H]. Output: hidden states [T, K, H].
    """

    @staticmethod
    def forward(ctx, projected, h0, c0, keep, weight_hh):
        g_slot = slice(2 * h0.shape[1], 3 * h0.shape[1])
        h, c = h0, c0
        h_in, c_in, gates_all, tanh_c, hidden = [], [], [], [], []
        for t in range(projected.shape[0]):
            h, c = h * keep[t], c * keep[t]
            gates = torch.addmm(projected[t], h, weight_hh.t())
            activated = gates.sigmoid()  # i, f and o; the g slot is overwritten with its tanh
            torch.tanh(gates[:, g_slot], out=activated[:, g_slot])
            i, f, g, o = activated.chunk(4, 1)
            h_in.append(h)
            c_in.append(c)
            c = torch.addcmul(f * c, i, g)
            tc = c.tanh()
            h = o * tc
            gates_all.append(activated)
            tanh_c.append(tc)
            hidden.append(h)
        ctx.save_for_backward(
            torch.stack(h_in), torch.stack(c_in), torch.stack(gates_all), torch.stack(tanh_c), keep, weight_hh
        )
        return torch.stack(hidden)

    @staticmethod
    def backward(ctx, grad_hidden):
        h_in, c_in, gates, tanh_c, keep, weight_hh = ctx.saved_tensors
        i, f, g, o = gates.chunk(4, 2)
        # d(pre-activation of each gate) / d(c) for i, f, g and / d(h) for o, at every step
        slopes = torch.cat((g * i * (1 - i), c_in * f * (1 - f), i * (1 - g * g), tanh_c * o * (1 - o)), 2)
        dc_per_dh = o * (1 - tanh_c * tanh_c)
        f_keep = f * keep
        dh_next = torch.zeros_like(h_in[0])
        dc_next = torch.zeros_like(c_in[0])
        dgates = torch.empty_like(gates)
        for t in reversed(range(gates.shape[0])):
            dh = grad_hidden[t] + dh_next
            dc = torch.addcmul(dc_next, dh, dc_per_dh[t])
            torch.mul(torch.cat((dc, dc, dc, dh), 1), slopes[t], out=dgates[t])
            dh_next = (dgates[t] @ weight_hh) * keep[t]
            dc_next = dc * f_keep[t]
        grad_weight_hh = dgates.flatten(0, 1).t() @ h_in.flatten(0, 1)
        return dgates, dh_next, dc_next, None, grad_weight_hh
