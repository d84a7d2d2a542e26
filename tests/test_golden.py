"""A golden Pong game: a fixed model, a fixed seed, the first actions recorded once and compared on every run.

Any change to the frame pipeline, the life handling or the agent's step changes these actions.
The weights are an integer formula (no random generator), so they are the same on every machine and
torch version. After a deliberate change to the pipeline, rerecord with `python -m tests.test_golden`
and say why in the commit.
"""

import json
import math
import os

import numpy as np
import torch

from agent import Agent
from environment import make_env
from model import A3Clstm

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden_pong.json")
ENV, SEED, STEPS, HIDDEN = "PongNoFrameskip-v4", 7, 400, 64


def formula_model(num_actions: int) -> A3Clstm:
    """Weights from an integer hash of their index (Knuth's multiplicative hash: exact on every machine),
    uniform with a fan-in scale; small biases."""
    model = A3Clstm(1, num_actions, HIDDEN)
    with torch.no_grad():
        for i, (name, param) in enumerate(model.named_parameters()):
            index = np.arange(param.numel(), dtype=np.int64) + 100_000 * i
            uniform = (index * 2654435761 % 2**32) / 2**32 - 0.5
            scale = math.sqrt(12.0 / param[0].numel()) if param.dim() > 1 else 0.02
            if name == "actor_linear.weight":
                scale *= 6.0
            param.copy_(torch.from_numpy(scale * uniform).reshape(param.shape))
    return model.eval()


def play_golden():
    """Greedy actions, the smallest gap between the two best logits, and each frame's mean, step by step."""
    env = make_env(ENV, training=False)
    model = formula_model(env.action_space.n)
    agent = Agent(model, [env], torch.device("cpu"), seed=SEED)
    actions, gaps, frame_means = [], [], []
    with torch.no_grad():
        for _ in range(STEPS):
            frame_means.append(float(agent.obs.mean()))
            action, _, logits = agent.act(greedy=True)
            top2 = logits[0].topk(2).values
            gaps.append(float(top2[0] - top2[1]))
            actions.append(int(action))
            agent.step(action)
    agent.close()
    return actions, gaps, frame_means


def test_golden_pong_actions_are_unchanged():
    with open(GOLDEN) as f:
        golden = json.load(f)
    actions, _, frame_means = play_golden()
    np.testing.assert_allclose(frame_means, golden["frame_means"], atol=1e-4)
    assert actions == golden["actions"]


if __name__ == "__main__":
    actions, gaps, frame_means = play_golden()
    with open(GOLDEN, "w") as f:
        json.dump({"env": ENV, "seed": SEED, "actions": actions, "frame_means": frame_means}, f)
    print(f"recorded {len(actions)} actions, {len(set(actions))} distinct; smallest logit gap {min(gaps):.2e}")
