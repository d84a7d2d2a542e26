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
        hx, cx = self.lstm(self.features(x), state)
        return self.critic_linear(hx).squeeze(1), self.actor_linear(hx), (hx, cx)

    def unroll(self, frames, state, starts):
        """Replay a rollout in one pass: convolutions batched over all T*K frames, the LSTM step by step.

        frames [T, K, C, H, W], starts [T, K] (1.0 where a new episode begins: the hidden state is
        zeroed there, exactly as the acting loop zeroes it) -> values [T, K], logits [T, K, A].
        """
        steps, batch = frames.shape[:2]
        features = self.features(frames.flatten(0, 1)).view(steps, batch, -1)
        hx, cx = state
        hiddens = []
        for t in range(steps):
            keep = (1.0 - starts[t]).unsqueeze(1)
            hx, cx = self.lstm(features[t], (hx * keep, cx * keep))
            hiddens.append(hx)
        hidden = torch.stack(hiddens)
        return self.critic_linear(hidden).squeeze(2), self.actor_linear(hidden)
