"""Each layer against torch itself: the forward output and every gradient equal what the
matching torch.nn module computes under torch.autograd (never refbp's own oracle), plus the
state each layer keeps (BatchNorm's running statistics, Dropout's masks) and the errors it
raises. The last section pins the MLP's public API, the network of Dense layers the seed reads.

A layer is run alone in a Network and differentiated from a random dJ/d(output) G with
``backward_from``: its gradients are then the vector-Jacobian products autograd computes with
``out.backward(G)``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import refbp
from refbp import MLP
from refbp.nn.activations import ACTIVATIONS, Activation, elu, gelu, leaky_relu, softplus
from refbp.nn.keys import Key
from refbp.nn.layers import BatchNorm1d, Dropout, Elementwise, Embedding, Flatten, Layer, LayerNorm, Linear, Residual
from refbp.nn.network import Network, NetworkGradients

FLOAT64_ROUNDING: dict[str, Any] = {"rtol": 1e-10, "atol": 1e-12}
"""refbp and torch compute the same float64 expressions with different kernels (summation
order, two-pass against Welford statistics). For these one-layer maps of at most a few dozen
terms the results differ by a few roundings (2.2e-16) of the largest term; 1e-10 relative
(1e-12 absolute, for entries that cancel to ~0) is a wide margin over that and still a million
times tighter than any real gradient bug."""

EXAMPLES = max(10, settings().max_examples // 3)
"""Per property: a third of the profile's budget (one-layer maps are cheap, but there are many)."""

seeds = st.integers(0, 2**31 - 1)


def randn(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=gen)


def run(layers: list[Layer], X: Tensor, G: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The network of ``layers``: its output, and every gradient from dJ/d(output) = G
    (G drawn from the output's shape when not given)."""
    net = Network(layers, "mse")
    cache = net.forward(X)
    return cache.y_hat, net.backward_from(cache, G_like(cache.y_hat) if G is None else G).as_dict()


def autograd(module: Callable[[Tensor], Tensor], X: Tensor, G: Tensor) -> tuple[Tensor, Tensor | None]:
    """torch's output and dJ/dX = G^T d(out)/dX (None for integer X)."""
    x = X.clone().requires_grad_() if X.is_floating_point() else X
    out = module(x)
    out.backward(G)
    return out.detach(), (x.grad if X.is_floating_point() else None)


def G_like(t: Tensor, seed: int = 1) -> Tensor:
    """A random dJ/d(t), of t's shape."""
    return torch.randn(t.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def close(actual: Tensor, expected: Tensor | None, name: str = "") -> None:
    assert expected is not None
    torch.testing.assert_close(actual, expected, **FLOAT64_ROUNDING, msg=lambda m: f"{name}: {m}")


# ---- Linear --------------------------------------------------------------------------------------
@settings(max_examples=EXAMPLES)
@given(
    lead=st.lists(st.integers(1, 3), min_size=1, max_size=2),  # (N,) or (B, T)
    d_in=st.integers(1, 4),
    d_out=st.integers(1, 4),
    bias=st.booleans(),
    seed=seeds,
)
def test_linear_output_and_gradients_equal_torch_nn_linear(
    lead: list[int], d_in: int, d_out: int, bias: bool, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    module = nn.Linear(d_in, d_out, bias=bias, dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(randn(gen, d_out, d_in))
        if bias:
            module.bias.copy_(randn(gen, d_out))
    X = randn(gen, *lead, d_in)
    G = randn(gen, *lead, d_out)
    layer = Linear(module.weight.detach().clone(), module.bias.detach().clone() if bias else None)
    y, grads = run([layer], X, G)
    out, dJ_dX = autograd(module, X, G)

    close(y, out, "y")
    assert list(grads) == (["W1", "b1"] if bias else ["W1"]) + ["a1", "X"]
    close(grads["W1"], module.weight.grad, "W1")
    if bias:
        close(grads["b1"], module.bias.grad, "b1")
    close(grads["X"], dJ_dX, "X")
    assert grads["X"].shape == X.shape


def test_weight_decay_adds_lambda_W_to_linear_weights_only() -> None:
    """J = half_sse + lambda/2 sum ||W||^2 over the weights of linear maps (not gamma, not b)."""
    gen = torch.Generator().manual_seed(0)
    W1, b1, gamma, beta, W3 = randn(gen, 3, 2), randn(gen, 3), randn(gen, 3), randn(gen, 3), randn(gen, 2, 3)
    X, y = randn(gen, 4, 2), randn(gen, 4, 2)
    lam = 0.3
    net = Network([Linear(W1, b1), LayerNorm(gamma, beta), Linear(W3)], "half_sse", weight_decay=lam)
    grads = net.backward(net.forward(X), y).as_dict()

    leaves = [t.clone().requires_grad_() for t in (W1, b1, gamma, beta, W3)]
    tW1, tb1, tgamma, tbeta, tW3 = leaves
    out = F.linear(F.layer_norm(F.linear(X, tW1, tb1), (3,), tgamma, tbeta), tW3)
    J = 0.5 * ((out - y) ** 2).sum() + lam / 2 * ((tW1**2).sum() + (tW3**2).sum())
    J.backward()
    for name, leaf in zip(["W1", "b1", "gamma2", "beta2", "W3"], leaves, strict=True):
        close(grads[name], leaf.grad, name)


# ---- Elementwise -----------------------------------------------------------------------------------
@st.composite
def activation_pairs(draw: st.DrawFn, name: str) -> tuple[Activation, nn.Module, list[float]]:
    """refbp's activation ``name`` with drawn parameters, the torch module it must equal, and
    the points where it changes formula (to be hit exactly)."""
    if name == "leaky_relu":
        slope = draw(st.floats(1e-3, 10.0))
        return leaky_relu(slope), nn.LeakyReLU(slope), [0.0]
    if name == "softplus":
        beta, threshold = draw(st.floats(0.1, 5.0)), draw(st.floats(0.5, 20.0))
        return softplus(beta, threshold), nn.Softplus(beta, threshold), [threshold / beta]
    if name == "elu":
        alpha = draw(st.floats(0.05, 5.0))
        return elu(alpha), nn.ELU(alpha), [0.0]
    if name in ("gelu", "gelu_tanh"):
        mode = "tanh" if name == "gelu_tanh" else "none"
        return gelu(mode), nn.GELU(mode), [0.0]
    activation = ACTIVATIONS[name]
    return activation, activation.torch_module(), [0.0]


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@settings(max_examples=EXAMPLES)
@given(data=st.data(), shape=st.lists(st.integers(1, 4), min_size=2, max_size=3), seed=seeds)
def test_elementwise_output_and_dJ_dx_equal_the_torch_module(
    name: str, data: st.DataObject, shape: list[int], seed: int
) -> None:
    activation, module, seams = data.draw(activation_pairs(name))
    assert type(module) is type(activation.torch_module())  # the module refbp converts to and from
    gen = torch.Generator().manual_seed(seed)
    X = torch.empty(*shape, dtype=torch.float64).uniform_(-6.0, 6.0, generator=gen)
    X.view(-1)[::3] = torch.tensor(seams[0], dtype=torch.float64)  # exactly on a seam: the conventions must agree
    G = randn(gen, *shape)
    y, grads = run([Elementwise(activation)], X, G)
    out, dJ_dX = autograd(module, X, G)
    close(y, out, "a1")
    close(grads["X"], dJ_dX, "X")
    assert list(grads) == ["a1", "X"]


def test_leaky_relu_with_a_slope_it_cannot_represent_is_refused_not_converted_wrongly() -> None:
    """f'(z) is read from a (a > 0 exactly when z > 0), which holds only for slope > 0."""
    for slope in (0.0, -0.5):
        with pytest.raises(ValueError, match=rf"slope={slope!r} must be a finite number > 0"):
            leaky_relu(slope)


# ---- LayerNorm ------------------------------------------------------------------------------------
@settings(max_examples=EXAMPLES)
@given(
    lead=st.lists(st.integers(1, 3), min_size=1, max_size=2),
    d=st.integers(1, 5),
    affine=st.sampled_from([(True, True), (True, False), (False, False)]),
    eps=st.sampled_from([1e-5, 1e-3, 0.5]),
    seed=seeds,
)
def test_layernorm_output_and_gradients_equal_torch_nn_layernorm(
    lead: list[int], d: int, affine: tuple[bool, bool], eps: float, seed: int
) -> None:
    elementwise_affine, bias = affine
    gen = torch.Generator().manual_seed(seed)
    module = nn.LayerNorm(d, eps=eps, elementwise_affine=elementwise_affine, bias=bias, dtype=torch.float64)
    gamma = beta = None
    if elementwise_affine:
        with torch.no_grad():
            module.weight.uniform_(0.5, 1.5, generator=gen)
            gamma = module.weight.detach().clone()
            if bias:
                module.bias.uniform_(-0.5, 0.5, generator=gen)
                beta = module.bias.detach().clone()
    X, G = randn(gen, *lead, d), randn(gen, *lead, d)
    y, grads = run([LayerNorm(gamma, beta, d=d, eps=eps)], X, G)

    x = X.clone().requires_grad_()
    xhat = F.layer_norm(x, (d,), None, None, eps)
    xhat.retain_grad()
    out = module.weight * xhat + (module.bias if bias else 0.0) if elementwise_affine else xhat
    out.backward(G)  # for dJ/dxhat
    module.zero_grad(set_to_none=True)
    _, dJ_dX = autograd(module, X, G)  # the module itself, for dJ/dX and the parameters

    close(y, out.detach(), "a1")
    close(grads["X"], dJ_dX, "X")
    close(grads["xhat1"], xhat.grad, "xhat1")
    expected = [*["gamma1", "beta1"][: elementwise_affine + bias], "xhat1", "a1", "X"]
    assert list(grads) == expected
    if elementwise_affine:
        close(grads["gamma1"], module.weight.grad, "gamma1")
    if bias:
        close(grads["beta1"], module.bias.grad, "beta1")


# ---- BatchNorm1d --------------------------------------------------------------------------------
def batchnorm_pair(
    C: int, seed: int, *, affine: bool = True, momentum: float | None = 0.1
) -> tuple[BatchNorm1d, nn.BatchNorm1d]:
    """refbp's BatchNorm1d and torch's with the same gamma, beta and running statistics (drawn
    away from 1, 0, 0 and 1) and a non-zero num_batches_tracked."""
    gen = torch.Generator().manual_seed(seed)
    module = nn.BatchNorm1d(C, momentum=momentum, affine=affine, dtype=torch.float64)
    assert module.running_mean is not None and module.running_var is not None and module.num_batches_tracked is not None
    with torch.no_grad():
        if affine:
            module.weight.uniform_(0.5, 1.5, generator=gen)
            module.bias.uniform_(-0.5, 0.5, generator=gen)
        module.running_mean.uniform_(-0.5, 0.5, generator=gen)
        module.running_var.uniform_(0.5, 1.5, generator=gen)
        module.num_batches_tracked.fill_(3)
    layer = BatchNorm1d(
        module.weight.detach().clone() if affine else None, module.bias.detach().clone() if affine else None,
        C=C, momentum=momentum, running_mean=module.running_mean.clone(), running_var=module.running_var.clone(),
        num_batches_tracked=3,
    )  # fmt: skip
    return layer, module


def assert_same_stats(layer: BatchNorm1d, module: nn.BatchNorm1d, when: str) -> None:
    assert layer.running_mean is not None and layer.running_var is not None
    close(layer.running_mean, module.running_mean, f"running_mean {when}")
    close(layer.running_var, module.running_var, f"running_var {when}")
    assert layer.num_batches_tracked == int(module.num_batches_tracked), when  # type: ignore[arg-type]


@pytest.mark.parametrize("momentum", [0.1, 0.7, None], ids=["m=0.1", "m=0.7", "m=None"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
@settings(max_examples=max(3, EXAMPLES // 3))
@given(N=st.integers(2, 5), C=st.integers(1, 4), steps=st.integers(1, 4), seed=seeds)
def test_batchnorm_training_step_by_step_equals_torch_nn_batchnorm1d(
    momentum: float | None, affine: bool, N: int, C: int, steps: int, seed: int
) -> None:
    """Output and every gradient of each step, and the running statistics and batch count after
    each of 1..4 forward passes (momentum's exponential average, or None's cumulative one)."""
    layer, module = batchnorm_pair(C, seed, affine=affine, momentum=momentum)
    gen = torch.Generator().manual_seed(seed + 1)
    net = Network([layer], "mse")
    for step in range(1, steps + 1):
        X, G = randn(gen, N, C), randn(gen, N, C)
        cache = net.forward(X)
        grads = net.backward_from(cache, G).as_dict()
        module.zero_grad()
        out, dJ_dX = autograd(module, X, G)
        close(cache.y_hat, out, f"a1 at step {step}")
        close(grads["X"], dJ_dX, f"X at step {step}")
        if affine:
            close(grads["gamma1"], module.weight.grad, f"gamma1 at step {step}")
            close(grads["beta1"], module.bias.grad, f"beta1 at step {step}")
        assert_same_stats(layer, module, f"after {step} forward passes")


@settings(max_examples=EXAMPLES)
@given(N=st.integers(1, 5), C=st.integers(1, 4), affine=st.booleans(), seed=seeds)
def test_batchnorm_eval_uses_the_running_statistics_as_torch_does(N: int, C: int, affine: bool, seed: int) -> None:
    layer, module = batchnorm_pair(C, seed, affine=affine)
    layer.set_training(False)
    module.eval()
    gen = torch.Generator().manual_seed(seed + 1)
    X, G = randn(gen, N, C), randn(gen, N, C)
    y, grads = run([layer], X, G)
    out, dJ_dX = autograd(module, X, G)
    close(y, out, "a1")
    close(grads["X"], dJ_dX, "X")
    if affine:
        close(grads["gamma1"], module.weight.grad, "gamma1")
        close(grads["beta1"], module.bias.grad, "beta1")
    # the running statistics: each row's output depends on that row alone, and nothing is updated
    alone, _ = run([layer], X[:1])
    torch.testing.assert_close(alone, y[:1], rtol=0, atol=0)
    assert_same_stats(layer, module, "after eval forward passes")


def test_batchnorm_forward_with_update_stats_false_changes_nothing() -> None:
    layer, _ = batchnorm_pair(3, 0)
    before = (layer.running_mean.clone(), layer.running_var.clone(), layer.num_batches_tracked)  # type: ignore[union-attr]
    X = randn(torch.Generator().manual_seed(2), 4, 3)
    net = Network([layer], "mse")
    quiet = net.forward(X, update_stats=False)
    assert torch.equal(layer.running_mean, before[0]) and torch.equal(layer.running_var, before[1])  # type: ignore[arg-type]
    assert layer.num_batches_tracked == before[2]
    updating = net.forward(X)  # the same batch statistics normalise either way
    torch.testing.assert_close(quiet.y_hat, updating.y_hat, rtol=0, atol=0)
    assert layer.num_batches_tracked == before[2] + 1
    assert not torch.equal(layer.running_mean, before[0])  # type: ignore[arg-type]


def test_checking_a_training_batchnorm_network_leaves_its_running_statistics_alone() -> None:
    layer, module = batchnorm_pair(3, 0)
    gen = torch.Generator().manual_seed(2)
    net = Network([Linear(randn(gen, 3, 2), randn(gen, 3)), layer], "mse")
    X, y = randn(gen, 4, 2), randn(gen, 4, 3)
    assert refbp.check(net, X, y).passed
    assert_same_stats(layer, module, "after refbp.check")  # module: never run, as drawn


def test_batchnorm_training_on_one_row_is_a_value_error() -> None:
    layer, _ = batchnorm_pair(3, 0)
    net = Network([layer], "mse")
    X = randn(torch.Generator().manual_seed(0), 1, 3)
    with pytest.raises(ValueError, match=r"needs a batch of N >= 2 rows in training mode.*\(1, 3\)"):
        net.forward(X)
    net.eval()
    net.forward(X)  # eval mode normalises by the running statistics: one row is fine


def test_batchnorm_without_running_statistics_normalises_by_the_batch_in_eval_too() -> None:
    gen = torch.Generator().manual_seed(5)
    module = nn.BatchNorm1d(3, track_running_stats=False, dtype=torch.float64).eval()
    layer = BatchNorm1d(module.weight.detach().clone(), module.bias.detach().clone(), track_running_stats=False)
    layer.set_training(False)
    X, G = randn(gen, 4, 3), randn(gen, 4, 3)
    y, grads = run([layer], X, G)
    out, dJ_dX = autograd(module, X, G)
    close(y, out, "a1")
    close(grads["X"], dJ_dX, "X")


# ---- Dropout ---------------------------------------------------------------------------------------
def test_dropout_same_seed_same_masks_and_each_forward_draws_a_new_one() -> None:
    X = torch.ones(64, 8, dtype=torch.float64)
    a, b, c = (Network([Dropout(0.5, seed=s)], "mse") for s in (7, 7, 8))
    first_a, first_b, first_c = (net.forward(X).noise[(1,)] for net in (a, b, c))
    assert torch.equal(first_a, first_b)
    assert not torch.equal(first_a, first_c)  # 2^-512 chance of a coincidence
    assert not torch.equal(a.forward(X).noise[(1,)], first_a)  # the generator moved on


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keeps_each_entry_with_probability_one_minus_p_and_scales_by_its_inverse(p: float) -> None:
    X = torch.randn(200, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cache = Network([Dropout(p, seed=3)], "mse").forward(X)
    mask = cache.noise[(1,)]
    assert mask.dtype == torch.bool and mask.shape == X.shape
    n = X.numel()
    kept = mask.double().mean().item()
    assert abs(kept - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)  # five standard deviations
    torch.testing.assert_close(cache.y_hat, torch.where(mask, X / (1 - p), 0.0), rtol=1e-15, atol=0)


@settings(max_examples=EXAMPLES)
@given(p=st.floats(0.0, 0.95), N=st.integers(1, 5), d=st.integers(1, 5), seed=seeds)
def test_dropout_backward_reuses_the_forward_mask(p: float, N: int, d: int, seed: int) -> None:
    """dJ/dx = dJ/dy o m / (1 - p) with the m of cache.noise, which is also what torch's autograd
    of x o m / (1 - p) gives; the same mask handed back as noise gives the same output."""
    gen = torch.Generator().manual_seed(seed)
    X, G = randn(gen, N, d), randn(gen, N, d)
    net = Network([Dropout(p, seed=seed)], "mse")
    cache = net.forward(X)
    grads = net.backward_from(cache, G).as_dict()
    if p == 0.0:
        assert cache.noise == {}
        torch.testing.assert_close(grads["X"], G, rtol=0, atol=0)
        return
    mask = cache.noise[(1,)]
    _, dJ_dX = autograd(lambda x: x * mask / (1 - p), X, G)
    close(grads["X"], dJ_dX, "X")
    close(grads["X"], G * mask / (1 - p), "X")
    again = net.forward(X, noise=cache.noise)
    torch.testing.assert_close(again.y_hat, cache.y_hat, rtol=0, atol=0)


@settings(max_examples=EXAMPLES)
@given(p=st.floats(0.0, 0.95), seed=seeds)
def test_dropout_in_eval_mode_is_the_identity(p: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    X, G = randn(gen, 3, 4), randn(gen, 3, 4)
    net = Network([Dropout(p, seed=seed)], "mse").eval()
    cache = net.forward(X)
    assert cache.noise == {}
    torch.testing.assert_close(cache.y_hat, X, rtol=0, atol=0)
    torch.testing.assert_close(net.backward_from(cache, G)["X"], G, rtol=0, atol=0)
    torch.testing.assert_close(nn.Dropout(p).eval()(X), cache.y_hat, rtol=0, atol=0)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, math.nan, math.inf, True, "0.5"])
def test_dropout_p_outside_zero_to_one_is_refused(p: object) -> None:
    with pytest.raises(ValueError, match=r"Dropout p=.* must be a probability in \[0, 1\)"):
        Dropout(p)  # type: ignore[arg-type]


# ---- Embedding --------------------------------------------------------------------------------------
@settings(max_examples=EXAMPLES)
@given(
    V=st.integers(1, 5),
    d=st.integers(1, 4),
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=2),
    padding=st.sampled_from([None, 0, -1]),
    data=st.data(),
    seed=seeds,
)
def test_embedding_gradient_accumulates_over_repeats_as_torch_nn_embedding(
    V: int, d: int, shape: list[int], padding: int | None, data: st.DataObject, seed: int
) -> None:
    """dJ/dE[v] sums dJ/dy over every position holding v (V is small, so indices repeat); the
    padding_idx row gets no gradient; there is no dJ/dX for indices."""
    gen = torch.Generator().manual_seed(seed)
    E = randn(gen, V, d)
    idx = torch.tensor(data.draw(st.lists(st.integers(0, V - 1), min_size=math.prod(shape), max_size=math.prod(shape))))
    idx = idx.reshape(shape)
    G = randn(gen, *shape, d)
    module = nn.Embedding(V, d, padding_idx=padding, dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(E)
    y, grads = run([Embedding(E.clone(), padding_idx=padding)], idx, G)
    out, _ = autograd(module, idx, G)

    close(y, out, "a1")
    assert list(grads) == ["E1", "a1"]  # no "X": the input holds integers
    close(grads["E1"], module.weight.grad, "E1")
    if padding is not None:
        assert torch.equal(grads["E1"][padding], torch.zeros(d, dtype=torch.float64))


def test_embedding_has_no_dJ_dX() -> None:
    net = Network([Embedding(torch.ones(3, 2, dtype=torch.float64)), Flatten()], "mse")
    cache = net.forward(torch.tensor([[0, 2], [1, 1]]))
    grads = net.backward(cache, torch.zeros(2, 4, dtype=torch.float64))
    assert "X" not in grads and "X" not in net.names()
    with pytest.raises(KeyError, match="token indices"):
        grads.dJ_dX  # noqa: B018
    assert "input" not in grads.torch_named()


@pytest.mark.parametrize(
    ("X", "error", "message"),
    [
        (torch.tensor([0, 5]), ValueError, r"index 5 is not a row; expected 0 <= idx < 5"),
        (torch.tensor([[1, -1]]), ValueError, r"index -1 is not a row; expected 0 <= idx < 5"),
        (torch.tensor([0, 1], dtype=torch.int32), TypeError, r"int64 token indices.*int32"),
        (torch.tensor([0.0, 1.0], dtype=torch.float64), TypeError, r"int64 token indices.*float64"),
    ],
    ids=["too-large", "negative", "int32", "float"],
)
def test_embedding_refuses_indices_that_are_not_rows_or_not_int64(X: Tensor, error: type, message: str) -> None:
    net = Network([Embedding(torch.zeros(5, 2, dtype=torch.float64))], "mse")
    with pytest.raises(error, match=message):
        net.forward(X)


# ---- Flatten --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("start", "end"), [(1, -1), (1, 2), (2, 3), (0, -1)])
def test_flatten_then_linear_equals_torch_and_dJ_dX_keeps_the_input_shape(start: int, end: int) -> None:
    gen = torch.Generator().manual_seed(0)
    X = randn(gen, 2, 3, 2, 2)
    merged = torch.flatten(X, start, end).shape
    W = randn(gen, 3, merged[-1])
    linear = nn.Linear(merged[-1], 3, bias=False, dtype=torch.float64)
    module = nn.Sequential(nn.Flatten(start, end), linear)
    with torch.no_grad():
        linear.weight.copy_(W)
    G = randn(gen, *merged[:-1], 3)
    y, grads = run([Flatten(start, end), Linear(W.clone())], X, G)
    out, dJ_dX = autograd(module, X, G)
    close(y, out, "a2")
    close(grads["W2"], linear.weight.grad, "W2")
    close(grads["X"], dJ_dX, "X")
    assert grads["X"].shape == X.shape and grads["a1"].shape == merged


# ---- Residual ---------------------------------------------------------------------------------------
@settings(max_examples=EXAMPLES)
@given(
    N=st.integers(1, 4),
    d=st.integers(1, 4),
    inner=st.sampled_from(["linear", "linear-tanh", "layernorm-linear"]),
    seed=seeds,
)
def test_residual_adds_the_skip_gradient_as_autograd_of_x_plus_F_x(N: int, d: int, inner: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    W, b, gamma, beta = randn(gen, d, d), randn(gen, d), randn(gen, d), randn(gen, d)
    X, G = randn(gen, N, d), randn(gen, N, d)
    if inner == "linear":
        layers: list[Layer] = [Linear(W, b)]
        names = ["W1.1", "b1.1"]
    elif inner == "linear-tanh":
        layers, names = [Linear(W, b), Elementwise("tanh")], ["W1.1", "b1.1"]
    else:
        layers, names = [LayerNorm(gamma, beta), Linear(W, b)], ["gamma1.1", "beta1.1", "W1.2", "b1.2"]
    y, grads = run([Residual(*layers)], X, G)

    leaves = {"W": W.clone().requires_grad_(), "b": b.clone().requires_grad_()}
    leaves |= {"gamma": gamma.clone().requires_grad_(), "beta": beta.clone().requires_grad_()}

    def F_of(x: Tensor) -> Tensor:
        if inner == "linear":
            return F.linear(x, leaves["W"], leaves["b"])
        if inner == "linear-tanh":
            return torch.tanh(F.linear(x, leaves["W"], leaves["b"]))
        return F.linear(F.layer_norm(x, (d,), leaves["gamma"], leaves["beta"]), leaves["W"], leaves["b"])

    out, dJ_dX = autograd(lambda x: x + F_of(x), X, G)
    close(y, out, "a1")
    close(grads["X"], dJ_dX, "X")
    for name in names:
        close(grads[name], leaves[Key.parse(name).kind].grad, name)
    last = f"a1.{len(layers)}"
    torch.testing.assert_close(grads[last], G, rtol=0, atol=0)  # dJ/dF(x) = dJ/dy


# ---- ties ---------------------------------------------------------------------------------------------
def tied_network(weight_decay: float = 0.0) -> tuple[Network, Tensor, Tensor, dict[str, Tensor]]:
    """Linear(W, b1) -> tanh -> Residual(Linear(W, b3.1)) -> Linear(W, b4): one W, three uses,
    one of them inside a Residual."""
    gen = torch.Generator().manual_seed(0)
    W, b1, b31, b4 = randn(gen, 3, 3), randn(gen, 3), randn(gen, 3), randn(gen, 3)
    net = Network(
        [Linear(W, b1), Elementwise("tanh"), Residual(Linear(W, b31)), Linear(W, b4)], "half_sse",
        weight_decay=weight_decay,
    )  # fmt: skip
    X, y = randn(gen, 4, 3), randn(gen, 4, 3)
    return net, X, y, {"W1": W, "b1": b1, "b3.1": b31, "b4": b4}


def tied_autograd(X: Tensor, y: Tensor, params: dict[str, Tensor], weight_decay: float) -> dict[str, Tensor]:
    leaves = {name: t.clone().requires_grad_() for name, t in params.items()}
    W = leaves["W1"]  # one leaf, used three times
    h = torch.tanh(F.linear(X, W, leaves["b1"]))
    h = h + F.linear(h, W, leaves["b3.1"])
    out = F.linear(h, W, leaves["b4"])
    J = 0.5 * ((out - y) ** 2).sum() + weight_decay / 2 * (W**2).sum()  # the weight counted once
    J.backward()
    return {name: leaf.grad for name, leaf in leaves.items()}  # type: ignore[misc]


def test_a_tied_weight_gets_the_sum_of_its_uses() -> None:
    net, X, y, params = tied_network()
    grads: NetworkGradients = net.backward(net.forward(X), y)
    expected = tied_autograd(X, y, params, 0.0)
    for name in params:
        close(grads[name], expected[name], name)
    assert "W3.1" not in grads and "W4" not in grads  # one key: the first
    named = grads.torch_named()  # as named_parameters() lists a shared parameter: once, by its first name
    assert named["0.weight"] is grads["W1"] and "2.body.0.weight" not in named and "3.weight" not in named
    module = net.to_torch()
    assert [name for name, _ in module.named_parameters() if name.endswith("weight")] == ["0.weight"]


def test_weight_decay_on_a_tied_weight_is_counted_once() -> None:
    net, X, y, params = tied_network(weight_decay=0.5)
    grads = net.backward(net.forward(X), y)
    expected = tied_autograd(X, y, params, 0.5)
    close(grads["W1"], expected["W1"], "W1")


# ---- the MLP: a network of Dense layers, its public API unchanged ------------------------------
def seed_mlp() -> tuple[MLP, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    W1, b1, W2, b2 = randn(gen, 3, 2), randn(gen, 3), randn(gen, 2, 3), randn(gen, 2)
    net = MLP.from_params(weights=[W1, W2], biases=[b1, b2], activations=["tanh", "sigmoid"], loss="half_sse")
    return net, randn(gen, 4, 2), torch.rand(4, 2, dtype=torch.float64, generator=gen)


def test_mlp_keys_are_W_b_z_a_per_layer_then_X_in_that_order() -> None:
    net, X, y = seed_mlp()
    grads = net.backward(net.forward(X), y)
    assert list(grads.as_dict()) == ["W1", "b1", "z1", "a1", "W2", "b2", "z2", "a2", "X"]
    assert net.names() == list(grads.as_dict())
    assert isinstance(net, Network)
    assert sorted(grads.torch_named()) == ["0.bias", "0.weight", "2.bias", "2.weight", "input"]


def test_mlp_cache_and_gradients_are_lists_indexed_from_one_and_equal_autograd() -> None:
    net, X, y = seed_mlp()
    cache = net.forward(X)
    grads = net.backward(cache, y)

    leaves = [t.clone().requires_grad_() for t in (net.W(1), net.b(1), net.W(2), net.b(2))]
    x = X.clone().requires_grad_()
    z1 = F.linear(x, leaves[0], leaves[1])
    a1 = torch.tanh(z1)
    z2 = F.linear(a1, leaves[2], leaves[3])
    a2 = torch.sigmoid(z2)
    for t in (z1, a1, z2, a2):
        t.retain_grad()
    (0.5 * ((a2 - y) ** 2).sum()).backward()

    assert torch.equal(cache.a[0], X) and cache.z[0] is None and len(cache.a) == len(cache.z) == 3
    for i, (z, a) in enumerate([(z1, a1), (z2, a2)], start=1):
        close(cache.z[i], z.detach(), f"z[{i}]")  # type: ignore[arg-type]
        close(cache.a[i], a.detach(), f"a[{i}]")
        close(grads.dJ_dz[i], z.grad, f"dJ_dz[{i}]")  # type: ignore[arg-type]
        close(grads.dJ_da[i], a.grad, f"dJ_da[{i}]")  # type: ignore[arg-type]
    assert grads.dJ_dW[0] is None and grads.dJ_db[0] is None and grads.dJ_dz[0] is None
    for i in (1, 2):
        close(grads.dJ_dW[i], leaves[2 * i - 2].grad, f"dJ_dW[{i}]")  # type: ignore[arg-type]
        close(grads.dJ_db[i], leaves[2 * i - 1].grad, f"dJ_db[{i}]")  # type: ignore[arg-type]
        assert grads.W(i) is grads.dJ_dW[i] and grads.b(i) is grads.dJ_db[i]
    close(grads.dJ_dX, x.grad, "dJ_dX")
    assert grads.dJ_da[0] is grads.dJ_dX
    for bad in (0, 3):
        with pytest.raises(IndexError, match=r"counted from 1"):
            grads.W(bad)
        with pytest.raises(IndexError, match=r"counted from 1"):
            net.W(bad)


def test_mlp_weights_and_biases_are_assignable_lists_that_update_the_layers() -> None:
    net, X, _ = seed_mlp()
    assert len(net.weights) == len(net.biases) == net.L == 2
    assert net.weights[0] is net.W(1) and net.biases[1] is net.b(2)
    W = torch.zeros(3, 2, dtype=torch.float64)
    b = torch.full((3,), 0.25, dtype=torch.float64)
    net.weights[0] = W
    net.biases[0] = b
    assert torch.equal(net.W(1), W) and torch.equal(net.b(1), b)
    cache = net.forward(X)
    torch.testing.assert_close(cache.z[1], b.expand(4, 3), rtol=0, atol=0)  # z(1) = X 0^T + b
    with pytest.raises(ValueError, match=r"weights\[0\] \(W1\) must keep its shape \(3, 2\)"):
        net.weights[0] = torch.zeros(2, 3, dtype=torch.float64)


def test_mlp_random_draws_torch_linear_init_reproducibly() -> None:
    a = MLP.random([4, 3, 2], activations=["relu", "identity"], loss="mse", seed=11)
    b = MLP.random([4, 3, 2], activations=["relu", "identity"], loss="mse", seed=11)
    c = MLP.random([4, 3, 2], activations=["relu", "identity"], loss="mse", seed=12)
    assert a.dims == [4, 3, 2] and [tuple(W.shape) for W in a.weights] == [(3, 4), (2, 3)]
    assert all(torch.equal(x, y) for x, y in zip([*a.weights, *a.biases], [*b.weights, *b.biases], strict=True))
    assert not torch.equal(a.W(1), c.W(1))
    for W, b_, d_in in zip(a.weights, a.biases, [4, 3], strict=True):
        bound = 1 / math.sqrt(d_in)
        assert float(W.abs().max()) <= bound and float(b_.abs().max()) <= bound


def test_mlp_backward_from_equals_autograd_and_leaves_its_argument_alone() -> None:
    net, X, _ = seed_mlp()
    cache = net.forward(X)
    G = G_like(cache.y_hat, 3)
    G_before = G.clone()
    grads = net.backward_from(cache, G)
    assert torch.equal(G, G_before)
    leaves = [t.clone().requires_grad_() for t in (net.W(1), net.b(1), net.W(2), net.b(2))]
    x = X.clone().requires_grad_()
    out = torch.sigmoid(F.linear(torch.tanh(F.linear(x, leaves[0], leaves[1])), leaves[2], leaves[3]))
    out.backward(G)
    close(grads.W(1), leaves[0].grad, "W1")
    close(grads.W(2), leaves[2].grad, "W2")
    close(grads.dJ_dX, x.grad, "X")


def test_mlp_release_cache_gives_the_same_gradients_and_forbids_reuse() -> None:
    net, X, y = seed_mlp()
    kept = net.backward(net.forward(X), y).as_dict()
    cache = net.forward(X)
    released = net.backward(cache, y, release_cache=True).as_dict()
    assert list(released) == list(kept)
    for name in kept:
        torch.testing.assert_close(released[name], kept[name], rtol=0, atol=0)
    with pytest.raises(ValueError, match="released"):
        net.backward(cache, y)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_mlp_keep_z_false_drops_z_only_where_f_prime_reads_a_and_changes_no_gradient(activation: str) -> None:
    net = MLP.random([3, 4, 2], activations=[activation, "identity"], loss="mse", seed=2)
    X = randn(torch.Generator().manual_seed(4), 5, 3)
    y = randn(torch.Generator().manual_seed(5), 5, 2)
    lean = net.forward(X, keep_z=False)
    full = net.forward(X)
    reads_a = ACTIVATIONS[activation].derivative_of == "a"
    assert (lean.z[1] is None) == reads_a and lean.z[2] is None and full.z[2] is not None
    g_lean, g_full = net.backward(lean, y), net.backward(full, y)
    for i in (1, 2):
        torch.testing.assert_close(g_lean.W(i), g_full.W(i), rtol=0, atol=0)
        torch.testing.assert_close(g_lean.b(i), g_full.b(i), rtol=0, atol=0)
    torch.testing.assert_close(g_lean.dJ_dX, g_full.dJ_dX, rtol=0, atol=0)


def test_a_network_without_parameters_takes_the_dtype_to_gives_it() -> None:
    """Activations and dropout alone have no parameter to carry a dtype: ``to`` sets it."""
    net = Network([Elementwise("tanh"), Dropout(0.25, seed=1)], "mse")
    assert net.dtype == torch.float64  # the default
    single = net.to(torch.float32)
    assert single.dtype == torch.float32 and net.dtype == torch.float64  # a copy; the original is unchanged
    gen = torch.Generator().manual_seed(0)
    X, y = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    cache = single.forward(X)
    grads = single.backward(cache, y).as_dict()
    assert {t.dtype for t in grads.values()} == {torch.float32}
    assert refbp.check(single, X, y, noise=cache.noise).passed
    with pytest.raises(ValueError, match="float32"):
        net.forward(X)  # the float64 network still refuses float32 input, naming it
