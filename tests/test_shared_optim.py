"""The shared optimizers compute what torch.optim computes, and their statistics are shared across processes."""

import pytest
import torch
import torch.multiprocessing as mp

from shared_optim import SharedAdam, SharedRMSprop, make_optimizer

CASES = [
    (lambda p: SharedAdam(p, lr=1e-3), lambda p: torch.optim.Adam(p, lr=1e-3, eps=1e-3)),
    (lambda p: SharedAdam(p, lr=1e-3, amsgrad=True), lambda p: torch.optim.Adam(p, lr=1e-3, eps=1e-3, amsgrad=True)),
    (
        lambda p: SharedAdam(p, lr=1e-2, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=1e-2, eps=1e-3, weight_decay=0.1),
    ),
    (lambda p: SharedRMSprop(p, lr=1e-3), lambda p: torch.optim.RMSprop(p, lr=1e-3, alpha=0.99, eps=0.1)),
    (
        lambda p: SharedRMSprop(p, lr=1e-3, momentum=0.9, centered=True),
        lambda p: torch.optim.RMSprop(p, lr=1e-3, alpha=0.99, eps=0.1, momentum=0.9, centered=True),
    ),
]


@pytest.mark.parametrize("make_shared, make_reference", CASES)
def test_matches_torch_optim_over_a_fixed_gradient_sequence(make_shared, make_reference):
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 3, generator=gen), torch.randn(7, generator=gen)]
    grads = [[torch.randn_like(p) * (1 + i) for p in start] for i in range(25)]
    shared_params = [p.clone().requires_grad_() for p in start]
    reference_params = [p.clone().requires_grad_() for p in start]
    shared, reference = make_shared(shared_params), make_reference(reference_params)
    for step_grads in grads:
        for params, opt in ((shared_params, shared), (reference_params, reference)):
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(shared_params, reference_params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # fused/multi-tensor kernels round differently


def test_state_lives_in_shared_memory_and_survives_a_state_dict_round_trip():
    params = [torch.zeros(4, requires_grad=True)]
    opt = SharedAdam(params, amsgrad=True)
    assert all(v.is_shared() for state in opt.state.values() for v in state.values())
    params[0].grad = torch.ones(4)
    opt.step()
    restored = SharedAdam([torch.zeros(4, requires_grad=True)], amsgrad=True)
    restored.load_state_dict(opt.state_dict())
    restored.share_memory()
    state = next(iter(restored.state.values()))
    assert all(v.is_shared() for v in state.values()) and float(state["step"]) == 1.0


def _step_in_child(params, optimizer, grad_value):
    params[0].grad = torch.full_like(params[0], grad_value)
    optimizer.step()


def test_a_step_in_another_process_updates_the_one_shared_state():
    params = [torch.zeros(3).share_memory_().requires_grad_()]
    optimizer = make_optimizer("Adam", params, lr=0.1)
    ctx = mp.get_context("spawn")
    for grad in (1.0, -2.0):
        child = ctx.Process(target=_step_in_child, args=(params, optimizer, grad))
        child.start()
        child.join(60)
        assert child.exitcode == 0
    state = optimizer.state[params[0]]
    assert float(state["step"]) == 2.0
    reference = [torch.zeros(3, requires_grad=True)]
    ref_opt = torch.optim.Adam(reference, lr=0.1, eps=1e-3)
    for grad in (1.0, -2.0):
        reference[0].grad = torch.full((3,), grad)
        ref_opt.step()
    torch.testing.assert_close(params[0].detach(), reference[0].detach())
