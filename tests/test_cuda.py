"""Every layer kind, the recurrent layers, the GPT and the second-order products on a CUDA GPU.

The rest of the suite runs on the CPU (and the MLP on every device, tests/test_backward.py). Here
torch modules are moved to the GPU, converted, and refbp's manual gradients computed there are
compared with torch.autograd on *the very module* on the GPU; refbp.check (autograd on the oracle
and float64 finite differences taken on the CPU) must pass on CUDA networks in float32. Each test
is skipped, saying why, on a machine without a CUDA GPU; each ``_on(device)`` helper takes the
device so that the same code runs on the CPU too (tests/test_cuda.py's helpers are what a GPU
machine runs: ``PYTHONPATH=. python -m pytest tests/test_cuda.py``).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import refbp
from refbp.models import GPT
from refbp.nn.layers import recurrent_from_torch
from refbp.nn.network import Network
from refbp.strategies import MODULE_KINDS, ModuleCase, RecurrentSpec, module_cases, recurrent_specs

from .conftest import requires_cuda
from .test_curriculum_layers import FLOAT64_ROUNDING, assert_same, running_stats, torch_step

pytestmark = [
    requires_cuda,
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning"),
]

EXAMPLES = 5
"""Drawn networks per layer kind and mode: a GPU run of this module takes under a minute."""


def layer_kind_on(case: ModuleCase, device: str) -> None:
    """The case's module on ``device``, converted: its manual gradients and running statistics
    equal torch.autograd's on that module, and every tensor stays on the device."""
    moved = ModuleCase(case.module.to(device), case.X.to(device), case.y.to(device), case.loss)
    net = refbp.from_torch(moved.module, loss=moved.loss)
    cache = net.forward(moved.X)
    grads = net.backward(cache, moved.y)
    out, expected = torch_step(moved)
    assert all(g.device.type == device for g in grads.as_dict().values())
    torch.testing.assert_close(cache.y_hat, out, **FLOAT64_ROUNDING)
    largest = max(float(t.abs().max()) for t in grads.as_dict().values())
    assert_same(grads.torch_named(), expected, scale=largest)
    assert_same(running_stats(net.to_torch()), running_stats(moved.module))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", MODULE_KINDS)
@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.data())
def test_each_layer_kind_equals_autograd_on_the_gpu(kind: str, training: bool, data: st.DataObject) -> None:
    layer_kind_on(data.draw(module_cases(include=[kind], training=training), label="case"), "cuda")


def recurrent_on(spec: RecurrentSpec, device: str) -> None:
    """An RNN/LSTM/GRU module on ``device``: manual dJ/dW, dJ/dx and dJ/dh0 equal autograd's."""
    module, x, h0, c0 = spec.build()
    module, x = module.to(device), x.to(device)
    h0 = None if h0 is None else h0.to(device)
    c0 = None if c0 is None else c0.to(device)
    net = Network([recurrent_from_torch(module, h0=h0, c0=c0)], "mse")
    cache = net.forward(x)
    y = torch.randn(cache.y_hat.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(spec.seed))
    y = y.to(device)
    grads = net.backward(cache, y)
    leaves = [t.clone().requires_grad_(True) if t is not None else None for t in (x, h0, c0)]
    state = None if leaves[1] is None else (leaves[1], leaves[2]) if leaves[2] is not None else leaves[1]
    out, _ = module(leaves[0], state)
    F.mse_loss(out, y).backward()
    torch.testing.assert_close(cache.y_hat, out.detach(), **FLOAT64_ROUNDING)
    named = grads.torch_named()
    for name, p in module.named_parameters():
        assert named[f"0.{name}"].device.type == device
        torch.testing.assert_close(named[f"0.{name}"], p.grad, **FLOAT64_ROUNDING, msg=name)
    assert leaves[0] is not None
    torch.testing.assert_close(grads.dJ_dX, leaves[0].grad, **FLOAT64_ROUNDING)


@settings(max_examples=3 * EXAMPLES, deadline=None)
@given(recurrent_specs())
def test_recurrent_layers_equal_autograd_on_the_gpu(spec: RecurrentSpec) -> None:
    recurrent_on(spec, "cuda")


def _gpt(device: str, dtype: torch.dtype, seed: int = 0) -> tuple[GPT, torch.Tensor, torch.Tensor]:
    net = GPT.random(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, seed=seed, dtype=dtype,
                     device=device)  # fmt: skip
    gen = torch.Generator().manual_seed(seed + 1)
    idx = torch.randint(0, 11, (3, 8), generator=gen).to(device)
    targets = torch.randint(0, 11, (3, 8), generator=gen).to(device)
    return net, idx, targets


def gpt_on(device: str) -> None:
    """A float64 GPT on ``device``: every parameter's manual gradient equals autograd's on the
    torch module (nanoGPT's layout); the lean step (no intermediates, cache released) gives the
    same numbers."""
    net, idx, targets = _gpt(device, torch.float64)
    grads = net.backward(net.forward(idx), targets).state_dict()  # nanoGPT's names
    module = net.to_torch()
    _, J = module(idx, targets)
    J.backward()
    for name, p in module.named_parameters():
        assert grads[name].device.type == device
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-10, atol=1e-12, msg=name)
    lean = net.backward(net.forward(idx, keep_intermediates=False), targets, intermediates=False,
                        release_cache=True).state_dict()  # fmt: skip
    for name, g in lean.items():
        torch.testing.assert_close(g, grads[name], rtol=1e-12, atol=1e-14, msg=name)


def test_the_gpt_equals_autograd_on_the_gpu() -> None:
    gpt_on("cuda")


def check_on(device: str) -> None:
    """refbp.check's default (autograd and finite differences) passes on a float32 GPT and a
    float32 CNN on ``device``; a wrong backward there fails it."""
    net, idx, targets = _gpt(device, torch.float32, seed=3)
    result = refbp.check(net, idx, targets)
    assert result.passed, result.failure_message()
    assert result.device.startswith(device)
    case = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(12, 3)).to(device)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(4, 2, 4, 4, generator=gen).to(device)
    y = torch.tensor([0, 2, 1, 1]).to(device)
    cnn = refbp.from_torch(case, loss="cross_entropy")
    assert refbp.check(cnn, X, y).passed
    grads = cnn.backward(cnn.forward(X), y).as_dict()
    wrong = {name: (-g if name == "W1" else g) for name, g in grads.items()}  # the seed's sign slip
    assert not refbp.check(cnn, X, y, wrong).passed
    # an LSTM with its initial states on the device (the float64 CPU oracle reads them too)
    lstm = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True).to(device)
    h0, c0 = (torch.randn(2, 2, 4, generator=gen).to(device) for _ in range(2))
    rnn = Network([recurrent_from_torch(lstm, h0=h0, c0=c0)], "mse")
    x = torch.randn(2, 5, 3, generator=gen).to(device)
    result = refbp.check(rnn, x, torch.randn(2, 5, 4, generator=gen).to(device))
    assert result.passed, result.failure_message()


def test_check_passes_on_the_gpu_and_catches_a_sign_slip() -> None:
    check_on("cuda")


def second_order_on(device: str) -> dict[str, Any]:
    """H v by the R-operator on ``device`` (a float64 GPT and a CNN) against torch.func's
    forward-over-reverse, double backward and differences of the gradient."""
    net, idx, targets = _gpt(device, torch.float64, seed=5)
    result = refbp.check_second_order(net, idx, targets, forward=True)
    assert result.passed, result.failure_message()
    module = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.Tanh(), torch.nn.AvgPool2d(2),
                                 torch.nn.Flatten(), torch.nn.Linear(12, 3)).double().to(device)  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(4, 2, 4, 4, dtype=torch.float64, generator=gen).to(device)
    y = torch.tensor([0, 2, 1, 1]).to(device)
    cnn = refbp.from_torch(module, loss="cross_entropy")
    for product in ("hessian", "gauss_newton"):
        checked = refbp.check_second_order(cnn, X, y, product=product)
        assert checked.passed, checked.failure_message()
    return {"gpt": result.passed}


def test_second_order_products_on_the_gpu() -> None:
    second_order_on("cuda")


def test_cpu_and_gpu_give_the_same_gradients() -> None:
    """The same float64 GPT on both devices: the manual gradients agree to rounding."""
    cpu_net, idx, targets = _gpt("cpu", torch.float64, seed=7)
    gpu_net, _, _ = _gpt("cuda", torch.float64, seed=7)
    cpu = cpu_net.backward(cpu_net.forward(idx), targets).as_dict()
    gpu = gpu_net.backward(gpu_net.forward(idx.cuda()), targets.cuda()).as_dict()
    assert cpu.keys() == gpu.keys()
    for name, g in gpu.items():
        torch.testing.assert_close(g.cpu(), cpu[name], rtol=1e-10, atol=1e-12, msg=name)
