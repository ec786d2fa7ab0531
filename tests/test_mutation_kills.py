"""Properties that pin down details of the manual backprop which the broad property tests leave
loose: found by mutation testing (scripts/mutation.py), each checked against torch itself or
against the layer protocol's documented contract. One file, because mutmut re-collects its whole
test selection (and forgets every result) when the list of selected files in setup.cfg changes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from refbp.nn.activations import ACTIVATIONS, SOFTPLUS_THRESHOLD, get_activation
from refbp.nn.cancellation import grouped_centred_size
from refbp.nn.dense import Dense
from refbp.nn.keys import Key
from refbp.nn.layer import BackwardContext, ForwardContext, Params, SecondContext
from refbp.nn.linear import Linear, bias_gradient, weight_gradient
from refbp.nn.losses import FACTORIES, LOSSES, get_loss, half_sse
from refbp.nn.mlp import MLP, ForwardCache, backward

from .conftest import requires_cuda


def _torch_derivative(fn: object, z: torch.Tensor) -> torch.Tensor:
    z = z.clone().requires_grad_(True)
    assert callable(fn)
    (grad,) = torch.autograd.grad(fn(z).sum(), z)
    return grad


def test_softplus_derivative_matches_torch_at_its_threshold_to_round_off() -> None:
    # torch switches to f(z) = z strictly above the threshold; at z = 20 itself f'(z) = sigmoid(20),
    # which differs from 1 by 2e-9 (float64; float32 rounds it to 1): rtol 1e-12 sees which side
    # of the switch z = 20 is on, while allowing torch's own round-off elsewhere.
    t = SOFTPLUS_THRESHOLD
    z = torch.tensor([t - 1e-3, t, t + 1e-3, -t, 0.0], dtype=torch.float64)
    expected = _torch_derivative(torch.nn.functional.softplus, z)
    torch.testing.assert_close(get_activation("softplus").derivative(z), expected, rtol=1e-12, atol=0)


def test_softplus_matches_torch_at_its_threshold_to_round_off() -> None:
    # at z = 20 torch still returns log(1 + e^20) = 20 + 2.1e-9, not z: a 1e-10 relative step
    t = SOFTPLUS_THRESHOLD
    z = torch.tensor([t - 1e-3, t, t + 1e-3, -t, 0.0], dtype=torch.float64)
    a = get_activation("softplus").f(z)
    torch.testing.assert_close(a, torch.nn.functional.softplus(z), rtol=1e-12, atol=0)


def _net_and_cache(dims: list[int], activations: list[str]) -> tuple[MLP, ForwardCache, torch.Tensor]:
    net = MLP.random(dims, activations=activations, loss="mse", seed=2)
    X = torch.randn(3, dims[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.zeros(3, dims[-1], dtype=torch.float64)
    return net, net.forward(X), y


def test_backward_keeps_every_intermediate_by_default_in_lists_indexed_like_the_equations() -> None:
    net, cache, y = _net_and_cache([2, 3, 4], ["tanh", "identity"])
    grads = backward(net, cache, y)  # the module function itself, with its own default
    assert set(grads.as_dict()) == {"W1", "b1", "z1", "a1", "W2", "b2", "z2", "a2", "X"}
    for values in (grads.dJ_dW, grads.dJ_db, grads.dJ_dz, grads.dJ_da):
        assert len(values) == net.L + 1  # [index 0, layer 1, ..., layer L]
    assert grads.dJ_dW[0] is None and grads.dJ_db[0] is None and grads.dJ_dz[0] is None


def test_a_foreign_cache_is_refused_with_its_own_and_the_network_s_widths() -> None:
    net, _, y = _net_and_cache([2, 3, 4], ["tanh", "identity"])
    _, foreign, _ = _net_and_cache([5, 7, 4], ["tanh", "identity"])
    with pytest.raises(ValueError, match=r"input width 5; .*\(2 layers, d_0 = 2\)"):
        backward(net, foreign, y)


def test_a_cache_missing_a_needed_z_is_refused_naming_the_layer() -> None:
    net, cache, y = _net_and_cache([2, 3, 4], ["gelu", "identity"])  # gelu' reads z
    cache.z[1] = None
    with pytest.raises(ValueError, match=r"cache\.z\[1\] is None but gelu's derivative needs z\(1\)"):
        backward(net, cache, y)


def test_an_unknown_activation_is_named_as_the_activation_argument() -> None:
    with pytest.raises(ValueError, match=r"^activation='swish' is not a known activation"):
        get_activation("swish")


# ---- backward_from and release_cache ----------------------------------------------------
def _small() -> tuple[MLP, torch.Tensor, torch.Tensor]:
    net = MLP.random([3, 4, 2], activations=["tanh", "tanh"], loss="half_sse", seed=3)  # f_L in place: not identity
    X = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return net, X, torch.zeros(5, 2, dtype=torch.float64)


def test_backward_from_leaves_the_callers_gradient_untouched_in_every_mode() -> None:
    from refbp.nn.mlp import backward_from

    net, X, _ = _small()
    upstream = torch.randn(5, 2, dtype=torch.float64)
    before = upstream.clone()
    for intermediates in (True, False):
        backward_from(net, net.forward(X), upstream, intermediates=intermediates)
        assert torch.equal(upstream, before)


def test_backward_from_releases_the_cache_only_when_asked() -> None:
    from refbp.nn.mlp import backward_from

    net, X, _ = _small()
    upstream = torch.ones(5, 2, dtype=torch.float64)
    kept = net.forward(X)
    backward_from(net, kept, upstream)
    assert not kept.released and kept.a[1].shape == (5, 4)
    released = net.forward(X)
    backward_from(net, released, upstream, release_cache=True)
    assert released.released and released.a[1].numel() == 0


def test_backward_keeps_the_cache_by_default_and_gives_the_same_gradients_twice() -> None:
    net, X, y = _small()
    cache = net.forward(X)
    first, second = backward(net, cache, y).as_dict(), backward(net, cache, y).as_dict()
    assert not cache.released and all(torch.equal(first[k], second[k]) for k in first)


def test_backward_from_detaches_an_upstream_gradient_that_requires_grad() -> None:
    from refbp.nn.mlp import backward_from

    net, X, _ = _small()
    upstream = torch.ones(5, 2, dtype=torch.float64, requires_grad=True)
    grads = backward_from(net, net.forward(X), upstream).as_dict()
    assert not any(g.requires_grad for g in grads.values())


def test_backward_from_and_released_cache_errors_name_the_argument_and_what_it_got() -> None:
    from refbp.nn.mlp import backward_from

    net, X, y = _small()
    with pytest.raises(
        ValueError,
        match=r"^dJ_da_L must have a\(L\)'s shape \(5, 2\) = \(N, d_L\), got shape \(5, 3\), dtype float64, device cpu",
    ):
        backward_from(net, net.forward(X), torch.zeros(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^dJ_da_L must have a\(L\)'s shape \(5, 2\) = \(N, d_L\), got list$"):
        backward_from(net, net.forward(X), [[0.0, 0.0]] * 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^dJ_da_L has shape \(5, 2\), dtype float32, device cpu, but the network"):
        backward_from(net, net.forward(X), torch.zeros(5, 2))
    cache = net.forward(X)
    backward(net, cache, y, release_cache=True)
    with pytest.raises(
        ValueError,
        match=r"^cache was released by an earlier backward\(\.\.\., release_cache=True\); run net\.forward\(X\) again$",
    ):
        backward(net, cache, y)


# ---- the parametrised activation factories, called afresh --------------------------------
# ACTIVATIONS is built once, at import: these call the factories themselves with torch's
# defaults and with other parameters, and hold each record to torch's own function and module.
def _record_against_torch(act: object, fn: object, module_type: type, z: torch.Tensor) -> None:
    from refbp.nn.activations import Activation

    assert isinstance(act, Activation) and callable(fn)
    torch.testing.assert_close(act.f(z), fn(z), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(act.torch_fn(z), fn(z), rtol=0, atol=0)
    module = act.torch_module()
    assert isinstance(module, module_type)
    torch.testing.assert_close(module(z), fn(z), rtol=0, atol=0)
    a = act.f(z)
    d = act.derivative(a if act.derivative_of == "a" else z)  # the cache entry it says it reads
    torch.testing.assert_close(d, _torch_derivative(fn, z), rtol=1e-12, atol=1e-15)


_Z = torch.tensor([-30.0, -3.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 3.0, 9.9, 10.0, 10.1, 30.0], dtype=torch.float64)


@pytest.mark.parametrize("slope", [0.01, 0.2, 3.0])
def test_leaky_relu_factory_builds_torch_s_leaky_relu_for_any_slope(slope: float) -> None:
    from refbp.nn.activations import ACTIVATIONS, leaky_relu

    act = leaky_relu(slope)
    fn = lambda z: torch.nn.functional.leaky_relu(z, slope)  # noqa: E731
    _record_against_torch(act, fn, torch.nn.LeakyReLU, _Z)
    assert act.torch_module().negative_slope == slope
    assert act.name == "leaky_relu" and act.derivative_of == "a" and act.kinked
    assert act.pieces is not None and act.pieces == ACTIVATIONS["relu"].pieces  # the kink at z = 0
    assert f"{slope:g} z" in act.equation and act.equation.count(f"{slope:g}") == 2


@pytest.mark.parametrize(("beta", "threshold"), [(1.0, SOFTPLUS_THRESHOLD), (2.0, SOFTPLUS_THRESHOLD), (0.5, 3.0)])
def test_softplus_factory_builds_torch_s_softplus_for_any_beta_and_threshold(beta: float, threshold: float) -> None:
    from refbp.nn.activations import softplus

    act = softplus(beta, threshold)
    fn = lambda z: torch.nn.functional.softplus(z, beta, threshold)  # noqa: E731
    _record_against_torch(act, fn, torch.nn.Softplus, _Z)
    module = act.torch_module()
    assert (module.beta, module.threshold) == (beta, threshold)
    assert act.name == "softplus" and act.derivative_of == "z" and not act.kinked
    assert act.pieces is not None and act.pieces.boundaries == (threshold / beta,)  # where torch switches to z
    assert f"z = {threshold / beta:g}" in act.pieces.description
    # the equation shows beta only where it is not 1: log(1 + e^(z)) or log(1 + e^(2 z)) / 2
    if beta == 1.0:
        assert act.equation.split(" ;  ")[0].endswith("e^(z))")  # no "/ 1" after it
    else:
        assert f"e^({beta:g} z)" in act.equation and f"/ {beta:g}" in act.equation
        assert f"sigmoid({beta:g} z)" in act.equation


@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.0])
def test_elu_factory_builds_torch_s_elu_for_any_alpha(alpha: float) -> None:
    from refbp.nn.activations import elu

    act = elu(alpha)
    fn = lambda z: torch.nn.functional.elu(z, alpha)  # noqa: E731
    _record_against_torch(act, fn, torch.nn.ELU, _Z)
    assert act.torch_module().alpha == alpha
    assert act.name == "elu" and act.derivative_of == "z" and not act.kinked
    assert act.pieces is not None and act.pieces.boundaries == (0.0,)  # f'' jumps at z = 0
    assert act.pieces.description.startswith("z = 0")
    # the equation shows alpha only where it is not 1: e^z - 1 or 2 (e^z - 1)
    if alpha == 1.0:
        assert "else (e^z - 1)" in act.equation and "else e^z" in act.equation
    else:
        assert f"else {alpha:g} (e^z - 1)" in act.equation and f"else {alpha:g} e^z" in act.equation


@pytest.mark.parametrize(("approximate", "name"), [(None, "gelu"), ("none", "gelu"), ("tanh", "gelu_tanh")])
def test_gelu_factory_builds_torch_s_gelu_in_both_forms(approximate: str | None, name: str) -> None:
    from refbp.nn.activations import gelu

    act = gelu() if approximate is None else gelu(approximate)
    form = approximate or "none"
    fn = lambda z: torch.nn.functional.gelu(z, approximate=form)  # noqa: E731
    _record_against_torch(act, fn, torch.nn.GELU, _Z)
    assert act.torch_module().approximate == form
    assert act.name == name and act.derivative_of == "z" and act.pieces is None
    f_text, d_text = act.equation.split(" ;  ")  # "a = ..." and "f'(z) = ...", as refbp explain prints
    assert f_text.startswith("a = ") and d_text.startswith("f'(z) = ")
    if form == "none":  # Phi the normal CDF, phi its density
        assert f_text == "a = z Phi(z)" and d_text == "f'(z) = Phi(z) + z phi(z)"
    else:  # torch's tanh form, with its cubic coefficient
        assert "tanh u" in f_text and "0.044715 z^3" in f_text and d_text.endswith("du/dz")
        assert "1/2 z (1 - tanh^2 u)" in d_text
    upstream = torch.linspace(-2.0, 2.0, _Z.numel(), dtype=torch.float64)
    dJ_dz = act.chain(_Z, upstream.clone())  # eq. (5): dJ/da o f'(z)
    torch.testing.assert_close(dJ_dz, upstream * _torch_derivative(fn, _Z), rtol=1e-12, atol=1e-15)


def test_gelu_factory_refuses_an_unknown_form_naming_the_two() -> None:
    from refbp.nn.activations import gelu

    with pytest.raises(ValueError, match=r"^approximate='erf'; expected 'none' \(exact erf form\) or 'tanh'$"):
        gelu("erf")


def test_the_factories_defaults_are_torch_s_defaults() -> None:
    from refbp.nn.activations import elu, leaky_relu, softplus

    F = torch.nn.functional
    _record_against_torch(leaky_relu(), F.leaky_relu, torch.nn.LeakyReLU, _Z)
    _record_against_torch(softplus(), F.softplus, torch.nn.Softplus, _Z)
    _record_against_torch(elu(), F.elu, torch.nn.ELU, _Z)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), True, "1"])
def test_the_factories_name_the_parameter_they_refuse(bad: object) -> None:
    from refbp.nn.activations import elu, leaky_relu, softplus

    for factory, name in ((leaky_relu, "slope"), (softplus, "beta"), (elu, "alpha")):
        with pytest.raises(ValueError, match=rf"^{name}=.* must be a finite number > 0$"):
            factory(bad)  # type: ignore[arg-type]


# ---- Dense: what it hands to the walk and to torch ---------------------------------------
def test_dense_cached_values_name_its_z_which_is_torch_s_linear_output() -> None:
    from refbp.nn.keys import Key

    net, X, _ = _small()
    cache = net.forward(X)
    layer = net.layers[0]
    values = layer.cached_values(cache.z[1], (1,))
    assert list(values) == [Key("z", (1,))]
    torch.testing.assert_close(values[Key("z", (1,))], torch.nn.functional.linear(X, net.W(1), net.b(1)))
    assert layer.cached_values(None, (1,)) == {}


def test_dense_equations_state_its_forward_and_eqs_5_to_8() -> None:
    net, _, _ = _small()
    forward, backward_eq = net.layers[0].equations()
    assert forward.startswith("z = a_prev W^T + b ;  a = f(z), ")
    assert "tanh" in forward and "f'" not in forward  # the activation's f, not its derivative
    for eq in ("dJ/dz = dJ/da o f'(z)", "dJ/dW = dJ/dz^T a_prev", "dJ/db = sum_n dJ/dz", "dJ/da_prev = dJ/dz W"):
        assert eq in backward_eq
    assert backward_eq.startswith("dJ/dz = ") and backward_eq.endswith("dJ/dz W")


def test_dense_to_torch_keeps_the_layer_s_dtype_and_device() -> None:
    from refbp.nn.dense import Dense

    net, X, _ = _small()
    module = net.layers[0].to_torch()
    assert isinstance(module, torch.nn.Sequential) and isinstance(module[0], torch.nn.Linear)
    assert module[0].weight.dtype == torch.float64
    torch.testing.assert_close(module(X), torch.tanh(torch.nn.functional.linear(X, net.W(1), net.b(1))))
    on_meta = Dense(torch.empty(4, 3, device="meta"), torch.empty(4, device="meta"), "tanh").to_torch()
    assert isinstance(on_meta, torch.nn.Sequential) and isinstance(on_meta[0], torch.nn.Linear)
    assert on_meta[0].weight.device.type == "meta" and on_meta[0].bias.device.type == "meta"


# ---- Loss.sample_targets: reproducible draws that the loss and torch accept ------------------
@pytest.mark.parametrize("name", ["half_sse", "mse", "bce", "cross_entropy"])
def test_sample_targets_are_reproducible_draws_over_the_whole_target_range(name: str) -> None:
    from refbp.nn.losses import LOSSES

    loss, shape = LOSSES[name], (400, 5)

    def draw(seed: int) -> torch.Tensor:
        return loss.sample_targets(shape, torch.Generator().manual_seed(seed))

    y = draw(0)
    assert torch.equal(y, draw(0)) and not torch.equal(y, draw(1))  # the generator decides, alone
    y_hat = torch.full(shape, 0.5, dtype=torch.float64)
    assert torch.isfinite(loss.torch_fn(y_hat, loss.check_targets(y, y_hat)))  # torch takes them as targets
    if loss.targets == "classes":  # every class index 0 .. C-1, and nothing else
        assert y.dtype == torch.int64 and y.shape == shape[:-1]
        assert sorted(y.unique().tolist()) == list(range(shape[-1]))
    elif loss.domain is not None:  # probabilities in [0, 1)
        assert y.dtype == torch.float64 and y.shape == shape
        assert 0.0 <= y.min() < 0.01 and 0.99 < y.max() < 1.0
    else:  # values in [-1, 1], both signs
        assert y.dtype == torch.float64 and y.shape == shape
        assert -1.0 <= y.min() < -0.99 and 0.99 < y.max() <= 1.0


# ---- cross_entropy, called afresh, with and without ignored targets --------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lead", [(6,), (2, 3)])
@pytest.mark.parametrize("ignore_index", [None, -100, 2, 7])
def test_cross_entropy_factory_matches_torch_with_and_without_ignored_targets(
    ignore_index: int | None, lead: tuple[int, ...], dtype: torch.dtype
) -> None:
    from refbp.nn.losses import cross_entropy

    loss = cross_entropy(ignore_index)
    C, g = 4, torch.Generator().manual_seed(5)
    z = (torch.randn(*lead, C, dtype=torch.float64, generator=g) * 3).to(dtype)
    y = torch.randint(0, C, lead, generator=g)
    if ignore_index is not None:
        y.view(-1)[::3] = ignore_index  # some targets ignored, not all
    leaf = z.clone().requires_grad_(True)
    index = -100 if ignore_index is None else ignore_index
    J = torch.nn.functional.cross_entropy(leaf.reshape(-1, C), y.reshape(-1), ignore_index=index)
    (grad,) = torch.autograd.grad(J, leaf)
    torch.testing.assert_close(loss.value(z, y), J.detach())
    torch.testing.assert_close(loss.gradient(z, y), grad)
    assert loss.gradient(z, y).dtype == dtype and loss.gradient(z, y).shape == z.shape
    torch.testing.assert_close(loss.torch_fn(z, y), J.detach())
    assert loss.check_targets(y, z) is y
    assert (loss.name, loss.targets, loss.output_activation) == ("cross_entropy", "classes", "identity")
    assert loss.ignore_index == ignore_index and loss.pieces is None and loss.domain is None
    assert loss.torch_equivalent.startswith("torch.nn.functional.cross_entropy(z, y")
    assert (f"ignore_index={ignore_index})" in loss.torch_equivalent) == (ignore_index is not None)
    if len(lead) == 1:  # the torch call it names, run as written, gives torch's J
        named = eval(loss.torch_equivalent, {"torch": torch, "z": z, "y": y})
        torch.testing.assert_close(named, J.detach())
    J_text, grad_text = loss.equation.split(" ;  ")
    assert J_text == "J = mean_n (logsumexp(z_n) - z_n[y_n])" and grad_text == "dJ/dz = (softmax(z) - onehot(y)) / M"


def test_cross_entropy_with_one_class_and_ignored_targets_matches_torch() -> None:
    # one class: every counted target is class 0, J = 0 and dJ/dz = 0; ignored rows index nothing
    from refbp.nn.losses import cross_entropy

    loss = cross_entropy(-100)
    z = torch.tensor([[0.5], [-2.0], [3.0]], dtype=torch.float64)
    y = torch.tensor([0, -100, 0])
    leaf = z.clone().requires_grad_(True)
    J = torch.nn.functional.cross_entropy(leaf, y, ignore_index=-100)
    (grad,) = torch.autograd.grad(J, leaf)
    torch.testing.assert_close(loss.value(z, y), J.detach())
    torch.testing.assert_close(loss.gradient(z, y), grad)


def test_cross_entropy_oracle_counts_every_class_of_a_wide_output() -> None:
    # without ignore_index every class counts, class 100 of 128 included (torch's default -100
    # is no class index, 100 is)
    from refbp.nn.losses import cross_entropy

    loss = cross_entropy()
    z = torch.randn(4, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([100, 3, 100, 127])
    J = torch.nn.functional.cross_entropy(z, y)
    torch.testing.assert_close(loss.torch_fn(z, y), J)
    torch.testing.assert_close(loss.value(z, y), J)


# ---- gelu's chunked chain at any shape and layout ------------------------------------------
@pytest.mark.parametrize("shape", [(), (7,), (3, 5), (2, 3, 4)])
def test_gelu_derivative_and_chain_match_autograd_at_any_rank(shape: tuple[int, ...]) -> None:
    act = get_activation("gelu")
    z = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 3
    expected = _torch_derivative(torch.nn.functional.gelu, z)
    torch.testing.assert_close(act.derivative(z), expected, rtol=1e-12, atol=1e-15)
    upstream = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(act.chain(z, upstream.clone()), upstream * expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("order", [(1, 0), (2, 1, 0)])
def test_gelu_chain_accepts_a_non_contiguous_upstream_gradient(order: tuple[int, ...]) -> None:
    act = get_activation("gelu")
    shape = (4, 6) if len(order) == 2 else (2, 3, 4)
    z = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    stored = torch.randn(shape[::-1], dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    upstream = stored.permute(order)  # z's shape, transposed strides
    assert upstream.shape == z.shape and not upstream.is_contiguous()
    expected = upstream * _torch_derivative(torch.nn.functional.gelu, z)
    torch.testing.assert_close(act.chain(z, upstream.clone()), expected, rtol=1e-12, atol=1e-15)


# ---- bce's pieces: which logarithm torch clamps, and where no finite difference can tell -------
def test_bce_regions_separate_exactly_the_points_torch_clamps_differently() -> None:
    from refbp.nn.losses import LOSSES

    bce = torch.nn.functional.binary_cross_entropy
    p = torch.tensor([0.0, 1e-60, 1e-30, 0.25, 0.5, 1 - 1e-12, 1.0], dtype=torch.float64)
    # torch clamps log(p) (resp. log(1 - p)) at -100: J(p, y = 1) (resp. J(p, y = 0)) is then 100
    clamped_low = bce(p, torch.ones_like(p), reduction="none") == 100
    clamped_high = bce(p, torch.zeros_like(p), reduction="none") == 100
    assert clamped_low.any() and clamped_high.any()
    pieces = LOSSES["bce"].pieces
    assert pieces is not None
    region = pieces.region_of(p)
    for i in range(len(p)):
        for j in range(len(p)):
            same_torch = bool(clamped_low[i] == clamped_low[j]) and bool(clamped_high[i] == clamped_high[j])
            assert bool(region[i] == region[j]) == same_torch, (p[i].item(), p[j].item())


def test_bce_unresolvable_points_are_those_within_the_resolution_of_0_or_1() -> None:
    from refbp.nn.losses import BCE_EPS, BCE_RESOLUTION, LOSSES

    p = torch.tensor([0.0, 1e-13, 1e-6, 5e-5, 2e-4, 0.5, 1 - 2e-4, 1 - 5e-5, 1 - 1e-6, 1.0], dtype=torch.float64)
    pieces = LOSSES["bce"].pieces
    assert pieces is not None and pieces.unresolvable is not None
    got = pieces.unresolvable(p)
    assert torch.equal(got, torch.minimum(p, 1.0 - p) < BCE_RESOLUTION)
    # and every point where torch's backward floors p (1 - p) at its epsilon is among them
    leaf = p.clone().requires_grad_(True)
    y = torch.full_like(p, 0.5)
    (grad,) = torch.autograd.grad(torch.nn.functional.binary_cross_entropy(leaf, y, reduction="sum"), leaf)
    floored = (p * (1.0 - p) < BCE_EPS) & (grad != 0)
    assert floored.any() and bool(got[floored].all())


# ---- class targets: the errors name the argument and y_hat's leading shape, at any rank -------
def test_class_target_errors_name_the_argument_and_the_expected_shape_at_any_rank() -> None:
    from refbp.nn.losses import LOSSES

    loss, int64 = LOSSES["cross_entropy"], torch.int64
    with pytest.raises(ValueError, match=r"^y must have shape \(2, 3\) for loss='cross_entropy', got shape \(3,\)"):
        loss.check_targets(torch.zeros(3, dtype=int64), torch.zeros(2, 3, 4))  # logits (2, 3, C): targets (2, 3)
    with pytest.raises(ValueError, match=r"^t must have shape \(5,\) for loss='cross_entropy', got shape \(4,\)"):
        loss.check_targets(torch.zeros(4, dtype=int64), torch.zeros(5, 4), argument="t")
    with pytest.raises(ValueError, match=r"^y must have shape \(5,\) = \(N,\) for loss='cross_entropy', got"):
        loss.check_targets(torch.zeros(4, dtype=int64), torch.zeros(5, 4), rows=True)
    with pytest.raises(TypeError, match=r"^labels must be a torch\.Tensor"):
        loss.check_targets([1, 2], torch.zeros(2, 4), argument="labels")


def test_a_bad_class_index_is_named_by_its_position_and_the_allowed_range() -> None:
    from refbp.nn.losses import LOSSES, cross_entropy

    y = torch.tensor([[0, 1, 2], [3, 0, 9]])  # 9 is no class of 4, at (1, 2)
    logits = torch.zeros(2, 3, 4)
    with pytest.raises(
        ValueError, match=r"^y\[\(1, 2\)\] = 9 is not a class index; expected 0 <= y < 4 \(or -100, ignored\)$"
    ):
        LOSSES["cross_entropy"].check_targets(y, logits)  # F.cross_entropy's default ignore_index
    with pytest.raises(
        ValueError, match=r"^y\[\(1, 2\)\] = 9 is not a class index; expected 0 <= y < 4 \(or -1, ignored\)$"
    ):
        cross_entropy(-1).check_targets(y, logits)
    with pytest.raises(
        ValueError, match=r"^y\[1\] = 9 is not a class index; expected 0 <= y < 4 \(d_L classes\) \(or -100, ignored\)$"
    ):
        LOSSES["cross_entropy"].check_targets(torch.tensor([0, 9]), torch.zeros(2, 4), rows=True)


def test_ignored_targets_are_accepted_unless_every_one_is_ignored() -> None:
    from refbp.nn.losses import cross_entropy

    loss, logits = cross_entropy(-1), torch.zeros(3, 4, dtype=torch.float64)
    for y in (torch.tensor([0, 1, 3]), torch.tensor([0, -1, 3])):  # none or some ignored: torch's mean has terms
        assert loss.check_targets(y, logits) is y
        assert torch.isfinite(torch.nn.functional.cross_entropy(logits, y, ignore_index=-1))
    everything_ignored = torch.tensor([-1, -1, -1])  # torch's mean would be 0 / 0
    assert torch.isnan(torch.nn.functional.cross_entropy(logits, everything_ignored, ignore_index=-1))
    with pytest.raises(ValueError, match=r"^every entry of t is -1 \(ignored\): the mean has no terms$"):
        loss.check_targets(everything_ignored, logits, argument="t")


def test_class_targets_on_another_device_than_the_output_are_refused_naming_both() -> None:
    # a CPU-only stand-in for a second device: logits on the meta device (shape, no values)
    from refbp.nn.losses import LOSSES

    with pytest.raises(ValueError, match=r"^y is on device cpu, but the network is on meta$"):
        LOSSES["cross_entropy"].check_targets(torch.tensor([0, 1]), torch.zeros(2, 4, device="meta"))


@requires_cuda
def test_class_targets_on_another_device_than_the_logits_are_refused_naming_both() -> None:
    from refbp.nn.losses import LOSSES

    with pytest.raises(ValueError, match=r"^y is on device cuda:0, but the network is on cpu$"):
        LOSSES["cross_entropy"].check_targets(torch.tensor([0, 1], device="cuda"), torch.zeros(2, 4))


# ---- Dense.backward and check_input called directly, in every mode ----------------------------
@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("overwrite", [True, False])
@pytest.mark.parametrize("need_dx", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
def test_dense_backward_equals_autograd_of_linear_and_activation_in_every_mode(
    keep: bool, overwrite: bool, need_dx: bool, weight_decay: float
) -> None:
    from refbp.nn.dense import Dense
    from refbp.nn.keys import Key
    from refbp.nn.layer import BackwardContext

    g = torch.Generator().manual_seed(8)
    W, b = torch.randn(4, 3, dtype=torch.float64, generator=g), torch.randn(4, dtype=torch.float64, generator=g)
    x, dJ_da = torch.randn(5, 3, dtype=torch.float64, generator=g), torch.randn(5, 4, dtype=torch.float64, generator=g)
    layer = Dense(W, b, "gelu")  # f'(z) reads z: the cache
    z = torch.addmm(b, x, W.T)
    leaves = [t.clone().requires_grad_(True) for t in (W, b, x)]
    z_t = torch.nn.functional.linear(leaves[2], leaves[0], leaves[1])
    z_t.retain_grad()
    (torch.nn.functional.gelu(z_t) * dJ_da).sum().backward()
    before = dJ_da.clone()
    ctx = BackwardContext(
        path=(2,), keep_intermediates=keep, overwrite=overwrite, need_dx=need_dx, weight_decay=weight_decay
    )
    grads = layer.backward(dJ_da, x, torch.nn.functional.gelu(z), z, ctx)
    assert leaves[0].grad is not None
    torch.testing.assert_close(grads.params["W"], leaves[0].grad + weight_decay * W)
    torch.testing.assert_close(grads.params["b"], leaves[1].grad)
    if need_dx:
        torch.testing.assert_close(grads.dJ_dx, leaves[2].grad)
    else:
        assert grads.dJ_dx is None  # not asked for: not computed
    assert list(grads.intermediates) == ([Key("z", (2,))] if keep else [])
    if keep:
        torch.testing.assert_close(grads.intermediates[Key("z", (2,))], z_t.grad)
    if not overwrite or keep:  # the caller keeps dJ/da: it must come back untouched
        assert torch.equal(dJ_da, before)


def _torch_dense_second(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, params: dict[str, torch.Tensor], g: torch.Tensor,
    Rx: torch.Tensor, V: dict[str, torch.Tensor], Rg: torch.Tensor, gauss_newton: bool,
) -> dict[str, object]:  # fmt: skip
    """torch.func on a = fn(F.linear(x, W, b)): R{z}, R{a}, dJ/dx, and R{dJ/dz}, R{dJ/dx} and H v by parameter
    (the jvp of the vjp along (R{x}, V, R{dJ/da})), or for G v the vjp of R{dJ/da} with the Jacobians held at
    the point (every term that carries dJ/da dropped)."""

    def z_of(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.linear(x, p["W"], p["b"])

    def a_of(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        return fn(z_of(x, p))

    def grads_of(
        x: torch.Tensor, p: dict[str, torch.Tensor], g: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        (dz,) = torch.func.vjp(fn, z_of(x, p))[1](g)
        dx, dp = torch.func.vjp(a_of, x, p)[1](g)
        return dz, dx, dp

    (_, dx, _), R = torch.func.jvp(grads_of, (x, params, g), (Rx, V, Rg))[:2]
    if gauss_newton:
        R = grads_of(x, params, Rg)  # J^T R{dJ/da}: the Jacobians at the point, no second derivative
    return {
        "Rz": torch.func.jvp(z_of, (x, params), (Rx, V))[1],
        "Ra": torch.func.jvp(a_of, (x, params), (Rx, V))[1],
        "dx": dx,
        "R_dz": R[0],
        "R_dx": R[1],
        "Hv": R[2],
    }


@pytest.mark.parametrize("mode", ["keep", "lean", "no-dx"])
@pytest.mark.parametrize("with_Rx", [True, False], ids=["R{x}", "first-layer"])
@pytest.mark.parametrize("gauss_newton", [False, True], ids=["Hv", "Gv"])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "gelu"])
def test_dense_tangent_and_r_backward_equal_torch_func(
    activation: str, gauss_newton: bool, with_Rx: bool, mode: str
) -> None:
    # Dense's second order against torch.func on torch.nn.Linear's op and torch's activation: R{z} and R{a},
    # then H v (or G v), R{dJ/dx}, dJ/dx and R{dJ/dz} from the R-backward, in each of its modes. tanh and
    # sigmoid read f'(z) and f''(z) from a, gelu from z; a first layer's input has no tangent (R{x} = 0).
    gen = torch.Generator().manual_seed(9)
    x, Rx = (torch.randn(5, 3, dtype=DTYPE, generator=gen) for _ in range(2))
    g, Rg = (torch.randn(5, 4, dtype=DTYPE, generator=gen) for _ in range(2))
    params = {"W": torch.randn(4, 3, dtype=DTYPE, generator=gen), "b": torch.randn(4, dtype=DTYPE, generator=gen)}
    V = {k: torch.randn(v.shape, dtype=DTYPE, generator=gen) for k, v in params.items()}
    layer, path = Dense(params["W"], params["b"], activation), (2,)
    want = _torch_dense_second(
        layer.activation.torch_fn, x, params, g, Rx if with_Rx else torch.zeros_like(x), V, Rg, gauss_newton
    )
    directions = Params({Key(k, path): v for k, v in V.items()})
    out, cache = layer.forward(x, ForwardContext(keep_intermediates=True), path)
    t = layer.tangent(x, Rx if with_Rx else None, out, cache, directions, path)
    torch.testing.assert_close(t.out, want["Ra"])
    assert list(t.intermediates) == [Key("z", path)]
    torch.testing.assert_close(t.intermediates[Key("z", path)], want["Rz"])
    ctx = SecondContext(path, gauss_newton=gauss_newton, need_dx=mode != "no-dx", keep_intermediates=mode != "lean")
    dJ_dx, got = layer.r_backward(g, Rg, x, Rx if with_Rx else None, out, t, cache, directions, ctx)
    Hv = want["Hv"]
    assert isinstance(Hv, dict) and set(got.params) == set(Hv) == {"W", "b"}
    for kind, value in Hv.items():
        torch.testing.assert_close(got.params[kind], value)
    if mode == "no-dx":
        assert dJ_dx is None and got.dJ_dx is None
    else:
        torch.testing.assert_close(dJ_dx, want["dx"])
        torch.testing.assert_close(got.dJ_dx, want["R_dx"])
    assert list(got.intermediates) == ([] if mode == "lean" else [Key("z", path)])
    if mode != "lean":
        torch.testing.assert_close(got.intermediates[Key("z", path)], want["R_dz"])


def test_dense_tangent_refuses_a_forward_pass_without_z_naming_the_layer_and_the_fix() -> None:
    layer = Dense(torch.zeros(4, 3, dtype=DTYPE), torch.zeros(4, dtype=DTYPE), "tanh")  # f'(z) reads a
    x = torch.zeros(5, 3, dtype=DTYPE)
    out, cache = layer.forward(x, ForwardContext(keep_intermediates=False), (3,))
    assert cache is None
    directions = Params({Key("W", (3,)): torch.zeros(4, 3, dtype=DTYPE), Key("b", (3,)): torch.zeros(4, dtype=DTYPE)})
    with pytest.raises(
        ValueError, match=r"^layer 3: the tangent needs z\(3\); run the forward pass with keep_intermediates=True$"
    ):
        layer.tangent(x, None, out, cache, directions, (3,))


def test_dense_forward_size_is_torch_s_output_shape_and_the_z_and_a_its_forward_allocates() -> None:
    W, b = torch.zeros(4, 3, dtype=DTYPE), torch.zeros(4, dtype=DTYPE)  # d_out != d_in
    x = torch.zeros(5, 3, dtype=DTYPE)
    layer = Dense(W, b, "tanh")
    a, z = layer.forward(x, ForwardContext(keep_intermediates=True), (1,))
    assert isinstance(z, torch.Tensor)
    expected = layer.to_torch()(x).shape
    assert a.shape == z.shape == expected
    assert layer.forward_size(tuple(x.shape)) == (tuple(expected), a.numel() + z.numel())


def test_dense_check_input_names_the_layer_the_width_and_what_it_got() -> None:
    from refbp.nn.dense import Dense

    layer = Dense(torch.zeros(4, 3), torch.zeros(4), "tanh")
    layer.check_input(torch.zeros(5, 3), (2,))  # (N, d_in): fine
    for bad, got in ((torch.zeros(5, 2), r"shape \(5, 2\)"), (torch.zeros(5, 3, 1), r"shape \(5, 3, 1\)")):
        with pytest.raises(ValueError, match=rf"^layer 2 \(Dense\(3 -> 4, tanh\)\) needs input \(N, 3\), got {got}"):
            layer.check_input(bad, (2,))


def test_a_new_dense_layer_takes_an_activation_name_and_starts_in_training_mode_like_torch() -> None:
    from refbp.nn.dense import Dense

    layer = Dense(torch.zeros(4, 3), torch.zeros(4), "relu")
    assert layer.activation is get_activation("relu")
    module = torch.nn.Linear(3, 4)
    assert layer.training is module.training is True  # torch modules start in training mode
    net, _, _ = _small()
    assert net.training is True and net.to_torch().training is True


# ---- value targets: the errors name the argument and y_hat's shape --------------------------
def test_value_target_errors_name_the_argument_and_the_expected_shape() -> None:
    from refbp.nn.losses import LOSSES

    loss, y_hat = LOSSES["mse"], torch.zeros(5, 2, dtype=torch.float64)
    wrong = torch.zeros(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^y must have shape \(5, 2\) like y_hat, got shape \(5, 3\)"):
        loss.check_targets(wrong, y_hat)
    with pytest.raises(ValueError, match=r"^y must have shape \(5, 2\) = \(N, d_L\) like y_hat, got shape \(5, 3\)"):
        loss.check_targets(wrong, y_hat, rows=True)
    with pytest.raises(TypeError, match=r"^t must be a torch\.Tensor"):
        loss.check_targets([[0.0, 0.0]] * 5, y_hat, argument="t")
    nan_at_1_0 = torch.zeros(5, 2, dtype=torch.float64)
    nan_at_1_0[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^t has 1 non-finite entries \(NaN or inf\), the first at index \(1, 0\)"):
        loss.check_targets(nan_at_1_0, y_hat, argument="t")


# ---- the layer modules: nn/linear.py, nn/dense.py, nn/cancellation.py ----------------------------
DTYPE = torch.float64


def _W() -> torch.Tensor:
    return torch.arange(6, dtype=DTYPE).reshape(2, 3) / 4 - 0.5  # (d_out, d_in) = (2, 3)


def test_linear_without_bias_becomes_a_torch_linear_without_bias_computing_the_same_map() -> None:
    module = Linear(_W()).to_torch()
    x = torch.randn(4, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    assert module.bias is None
    torch.testing.assert_close(module(x).detach(), F.linear(x, _W()))


@pytest.mark.parametrize(("bias", "named"), [(False, "Linear(3 -> 2, no bias)"), (True, "Linear(3 -> 2)")])
def test_linear_refuses_an_input_of_the_wrong_width_naming_its_path_itself_and_the_input(
    bias: bool, named: str
) -> None:
    layer = Linear(_W(), torch.zeros(2, dtype=DTYPE) if bias else None)
    x = torch.zeros(4, 5, dtype=DTYPE)
    with pytest.raises(ValueError) as caught:
        layer.check_input(x, (2, 1))
    message = str(caught.value)
    assert "layer 2.1 " in message and named in message and "needs input (..., 3)" in message
    assert "shape (4, 5), dtype float64" in message


def test_linear_forward_size_is_the_shape_torch_returns_for_any_leading_dimensions() -> None:
    x = torch.zeros(4, 5, 3, dtype=DTYPE)  # (B, T, d_in)
    expected = F.linear(x, _W()).shape
    assert Linear(_W()).forward_size(tuple(x.shape)) == (tuple(expected), expected.numel())


def test_linear_starts_in_training_mode_as_torch_modules_do() -> None:
    assert Linear(_W()).training == torch.nn.Linear(3, 2).training


def test_linear_backward_leaves_dJ_dx_out_when_not_asked_for() -> None:
    x = torch.ones(4, 3, dtype=DTYPE)
    dJ_dy = torch.ones(4, 2, dtype=DTYPE)
    grads = Linear(_W()).backward(dJ_dy, x, F.linear(x, _W()), None, BackwardContext(path=(0,), need_dx=False))
    assert grads.dJ_dx is None


@pytest.mark.parametrize("need_dx", [True, False], ids=["need_dx", "no-dx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("with_Rx", [True, False], ids=["R{x}", "first-layer"])
def test_linear_tangent_and_r_backward_equal_torch_func(with_Rx: bool, bias: bool, need_dx: bool) -> None:
    # R{y} is the jvp of torch's F.linear along (R{x}, V); R{dJ/dx} and H v are the jvp of its vjp along
    # (R{x}, V, R{dJ/dy}). A first layer's input has no tangent (R{x} = None: torch's R{x} = 0), and H v
    # has exactly torch.nn.Linear's parameters, with or without dJ/dx asked for.
    gen = torch.Generator().manual_seed(5)
    x, g, Rg = (torch.randn(4, 3, 3 if i == 0 else 2, dtype=DTYPE, generator=gen) for i in range(3))
    params = {"W": _W()} | ({"b": torch.randn(2, dtype=DTYPE, generator=gen)} if bias else {})
    V = {k: torch.randn(v.shape, dtype=DTYPE, generator=gen) for k, v in params.items()}
    Rx = torch.randn(x.shape, dtype=DTYPE, generator=gen) if with_Rx else None
    layer, path = Linear(params["W"], params.get("b")), (1,)
    directions = Params({Key(k, path): v for k, v in V.items()})

    def out_of(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.linear(x, p["W"], p.get("b"))

    def grads_of(
        x: torch.Tensor, p: dict[str, torch.Tensor], g: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        dx, dp = torch.func.vjp(out_of, x, p)[1](g)
        return dx, dp

    tangent_x = torch.zeros_like(x) if Rx is None else Rx
    R_out = torch.func.jvp(out_of, (x, params), (tangent_x, V))[1]
    (dx, _), (R_dx, R_dp) = torch.func.jvp(grads_of, (x, params, g), (tangent_x, V, Rg))[:2]
    out, cache = layer.forward(x, ForwardContext(), path)
    t = layer.tangent(x, Rx, out, cache, directions, path)
    torch.testing.assert_close(t.out, R_out)
    dJ_dx, got = layer.r_backward(g, Rg, x, Rx, out, t, cache, directions, SecondContext(path, need_dx=need_dx))
    torch_names = {name for name, _ in torch.nn.Linear(3, 2, bias=bias).named_parameters()}  # weight (, bias)
    assert {{"W": "weight", "b": "bias"}[kind] for kind in got.params} == torch_names
    assert set(got.params) == set(R_dp)
    for kind, want in R_dp.items():
        torch.testing.assert_close(got.params[kind], want)
    if need_dx:
        assert dJ_dx is not None and got.dJ_dx is not None
        torch.testing.assert_close(dJ_dx, dx)
        torch.testing.assert_close(got.dJ_dx, R_dx)
    else:
        assert dJ_dx is None and got.dJ_dx is None


def test_linear_gradient_helpers_are_torch_s_without_weight_decay_by_default() -> None:
    # weight_gradient's lambda defaults to 0: plain autograd of F.linear, for any leading dimensions
    gen = torch.Generator().manual_seed(6)
    for lead in ((4,), (2, 3)):
        x, dJ_dy = torch.randn(*lead, 3, dtype=DTYPE, generator=gen), torch.randn(*lead, 2, dtype=DTYPE, generator=gen)
        W, b = _W().requires_grad_(True), torch.zeros(2, dtype=DTYPE, requires_grad=True)
        dW, db = torch.autograd.grad(F.linear(x, W, b), (W, b), dJ_dy)
        torch.testing.assert_close(weight_gradient(dJ_dy, x, _W()), dW)
        torch.testing.assert_close(bias_gradient(dJ_dy), db)


def test_linear_to_torch_keeps_the_layer_s_device() -> None:
    # the meta device stands for any device but the CPU: torch.nn.Linear's parameters must be made there
    for b in (None, torch.empty(2, device="meta")):
        module = Linear(torch.empty(2, 3, device="meta"), b).to_torch()
        assert all(p.device.type == "meta" for p in module.parameters())
        assert module.weight.device.type == "meta"


def _dense_z(activation: str, z_row: list[float]) -> tuple[Dense, torch.Tensor]:
    """A Dense layer whose z is exactly z_row on every row (W = 0, b = z_row), and that z from its forward."""
    b = torch.tensor(z_row, dtype=DTYPE)
    layer = Dense(torch.zeros(len(z_row), 2, dtype=DTYPE), b, activation)
    _, z = layer.forward(torch.ones(3, 2, dtype=DTYPE), ForwardContext(keep_intermediates=True), (0,))
    assert isinstance(z, torch.Tensor)
    return layer, z


def _one_sided_slopes_differ(fn: object, z: torch.Tensor, h: float = 1e-3) -> torch.Tensor:
    """Where torch's f has different slopes left and right of z: its kinks."""
    assert callable(fn)
    return ((fn(z + h) - fn(z)) - (fn(z) - fn(z - h))).abs() > h / 10  # a slope jump s: s h; smooth: ~h^2


@pytest.mark.parametrize(("activation", "fn"), [("relu", F.relu), ("leaky_relu", F.leaky_relu)])
def test_dense_reports_its_kinks_exactly_where_torchs_activation_has_two_slopes(activation: str, fn: object) -> None:
    layer, z = _dense_z(activation, [-1.0, 0.0, 2.0])
    kinks = layer.kinks(z, (1,))
    assert set(kinks) == {Key("z", (1,))}
    torch.testing.assert_close(kinks[Key("z", (1,))], _one_sided_slopes_differ(fn, z))


def test_dense_reports_no_kinks_without_z_or_for_a_smooth_activation() -> None:
    relu, _ = _dense_z("relu", [0.0, 1.0])
    assert relu.kinks(None, (1,)) == {}  # the forward pass kept no z
    softplus, z = _dense_z("softplus", [20.0, 0.0])  # softplus changes formula at 20 but has no kink there
    assert not _one_sided_slopes_differ(F.softplus, z).any()
    assert softplus.kinks(z, (1,)) == {}


def test_grouped_centred_size_uses_torch_group_norms_statistics() -> None:
    # groups with different means, so statistics over the wrong dimension or with Bessel's
    # correction give other sizes
    N, C, G, eps = 2, 4, 2, 1e-5
    x = torch.randn(N, C, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    x = x + torch.arange(N * C, dtype=DTYPE).reshape(N, C, 1)
    _, mean, rstd = torch.native_group_norm(x, None, None, N, C, 3, G, eps)  # (N, G) each
    mean_c = mean.repeat_interleave(C // G, dim=1).unsqueeze(-1)  # (N, C, 1)
    rstd_c = rstd.repeat_interleave(C // G, dim=1).unsqueeze(-1)
    expected = (x.abs() + mean_c.abs()) * rstd_c  # (|x| + |mean|) / sqrt(var + eps)
    torch.testing.assert_close(grouped_centred_size(x, G, eps), expected)


def test_half_sse_factory_builds_torch_half_sum_of_squares() -> None:
    # refbp.nn.losses.LOSSES is built at import; the factory itself, called afresh, must give the same
    # record: J and dJ/dy_hat of 0.5 * F.mse_loss(..., reduction="sum"), whose text is that torch code.
    gen = torch.Generator().manual_seed(12)
    y_hat, y = (
        torch.randn(4, 3, generator=gen, dtype=torch.float64),
        torch.randn(4, 3, generator=gen, dtype=torch.float64),
    )
    loss = half_sse()
    assert (loss.name, loss.reduction, loss.targets, loss.output_activation) == ("half_sse", "sum", "values", None)
    registered = LOSSES["half_sse"]  # what get_loss and the networks use: the same record, text included
    for field in ("torch_equivalent", "equation", "ignore_index", "pieces", "domain", "bounded_below"):
        assert getattr(loss, field) == getattr(registered, field), field
    leaf = y_hat.clone().requires_grad_()
    expected = eval(loss.torch_equivalent, {"torch": torch}, {"y_hat": leaf, "y": y})  # refbp's own text
    (dJ_dy_hat,) = torch.autograd.grad(expected, leaf)
    torch.testing.assert_close(expected.detach(), 0.5 * F.mse_loss(y_hat, y, reduction="sum"))
    torch.testing.assert_close(loss.value(y_hat, y), expected.detach())
    torch.testing.assert_close(loss.torch_fn(y_hat, y), expected.detach())
    torch.testing.assert_close(loss.gradient(y_hat, y), dJ_dy_hat)
    message = (
        r"^reduction='mean' for loss='half_sse'; expected 'sum' "
        r"\(half_sse is 1/2 sum \(y_hat - y\)\^2; for a mean use loss='mse'\)$"
    )
    with pytest.raises(ValueError, match=message):
        half_sse(reduction="mean")


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_every_loss_factory_called_afresh_gives_the_registered_torch_loss(name: str) -> None:
    # LOSSES is built at import, so the networks never run a factory's body again: called afresh with
    # its defaults it must give the registered record (fields, texts) and torch's J and dJ/dy_hat, the
    # registered oracle's under autograd.
    registered, loss = LOSSES[name], FACTORIES[name]()
    for field in ("name", "torch_equivalent", "equation", "output_activation", "targets", "ignore_index",
                  "pieces", "domain", "reduction", "bounded_below"):  # fmt: skip
        assert getattr(loss, field) == getattr(registered, field), field
    gen = torch.Generator().manual_seed(13)
    y_hat = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    if registered.domain is not None:  # bce: probabilities inside (0, 1)
        y_hat = torch.sigmoid(y_hat)
    y = registered.sample_targets((5, 4), gen)
    leaf = y_hat.clone().requires_grad_()
    expected = registered.torch_fn(leaf, y)
    (dJ_dy_hat,) = torch.autograd.grad(expected, leaf)
    torch.testing.assert_close(loss.torch_fn(y_hat, y), expected.detach())
    torch.testing.assert_close(loss.value(y_hat, y), expected.detach())
    torch.testing.assert_close(loss.gradient(y_hat, y), dJ_dy_hat)


TORCH_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "mse": F.mse_loss,
    "bce": F.binary_cross_entropy,
    "cross_entropy": F.cross_entropy,
    "nll": F.nll_loss,
    "multi_margin": F.multi_margin_loss,
}
"""torch's function of each loss that has a reduction argument."""


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", sorted(TORCH_LOSSES))
def test_every_loss_with_either_reduction_is_torch_and_names_itself_in_errors(name: str, reduction: str) -> None:
    # J and dJ/dy_hat of FACTORIES[name](reduction=...) against torch's function with that reduction, the
    # record's torch text evaluated too; a reduction torch does not have is refused naming the loss.
    loss = FACTORIES[name](reduction=reduction)
    assert loss.reduction == reduction
    gen = torch.Generator().manual_seed(14)
    y_hat = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    if loss.domain is not None:  # bce: probabilities inside (0, 1)
        y_hat = torch.sigmoid(y_hat)
    y = loss.sample_targets((5, 4), gen)
    leaf = y_hat.clone().requires_grad_()
    expected = TORCH_LOSSES[name](leaf, y, reduction=reduction)
    (dJ_dy_hat,) = torch.autograd.grad(expected, leaf)
    if name in ("mse", "bce"):  # a torch call on y_hat and y (the others' text names their log-probabilities)
        namespace = {"y_hat": y_hat, "y": y}
        torch.testing.assert_close(eval(loss.torch_equivalent, {"torch": torch}, namespace), expected.detach())
    torch.testing.assert_close(loss.torch_fn(y_hat, y), expected.detach())
    torch.testing.assert_close(loss.value(y_hat, y), expected.detach())
    torch.testing.assert_close(loss.gradient(y_hat, y), dJ_dy_hat)
    if name == "mse":  # its equation text says which
        assert loss.equation.startswith(f"J = {reduction} (y_hat - y)^2")
        gradient_text = "2 (y_hat - y) / (N d)" if reduction == "mean" else "2 (y_hat - y)"  # what autograd gives
        assert loss.equation.endswith(f";  dJ/dy_hat = {gradient_text}")
    with pytest.raises(ValueError, match=rf"^reduction='avg' for loss='{name}'; expected one of \['mean', 'sum'\]$"):
        FACTORIES[name](reduction="avg")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bce_equation_states_torch_s_reduction_and_the_gradient_autograd_gives(reduction: str) -> None:
    # which reduction the text names, and whether dJ/dp divides by N d, are read off torch's J and autograd
    loss = FACTORIES["bce"](reduction=reduction)
    gen = torch.Generator().manual_seed(15)
    p = torch.sigmoid(torch.randn(5, 4, generator=gen, dtype=torch.float64)).requires_grad_()
    y = torch.rand(5, 4, generator=gen, dtype=torch.float64)
    J = F.binary_cross_entropy(p, y, reduction=reduction)
    (dJ_dp,) = torch.autograd.grad(J, p)
    p = p.detach()
    terms = y * torch.log(p) + (1.0 - y) * torch.log(1.0 - p)
    word = "mean" if torch.allclose(J, -terms.mean()) else "sum"
    torch.testing.assert_close(J.detach(), -terms.mean() if word == "mean" else -terms.sum())
    per_entry = (p - y) / (p * (1.0 - p))
    divided = torch.allclose(dJ_dp * p.numel(), per_entry)
    torch.testing.assert_close(dJ_dp * (p.numel() if divided else 1), per_entry)
    assert loss.equation.startswith(f"J = -{word}(y log p + (1-y) log(1-p)) ;  ")
    assert loss.equation.endswith(f";  dJ/dp = (p - y) / (p (1-p){' N d' if divided else ''})")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", sorted(TORCH_LOSSES))
def test_get_loss_with_a_reduction_is_torch_s_loss_with_that_reduction(name: str, reduction: str) -> None:
    loss = get_loss(name, reduction=reduction)
    assert loss.name == name and loss.reduction == reduction
    gen = torch.Generator().manual_seed(16)
    y_hat = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    if loss.domain is not None:  # bce: probabilities inside (0, 1)
        y_hat = torch.sigmoid(y_hat)
    y = loss.sample_targets((5, 4), gen)
    torch.testing.assert_close(loss.value(y_hat, y), TORCH_LOSSES[name](y_hat, y, reduction=reduction))


def test_get_loss_passes_a_record_through_unless_asked_for_another_reduction() -> None:
    record = FACTORIES["mse"](reduction="sum")
    assert get_loss(record) is record and get_loss(record, reduction="sum") is record
    message = (
        r"^loss='mse' is already a record with reduction='sum'; got reduction='mean' too: pass the loss's name, "
        r"or build the record with its factory \(refbp\.nn\.losses\.mse\(reduction='mean'\)\)$"
    )
    with pytest.raises(ValueError, match=message):
        get_loss(record, reduction="mean")


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("shape", [(7,), (4, 16), (2, 3, 5)], ids=["rank-1", "rank-2", "rank-3"])
@pytest.mark.parametrize("chunked", [False, True], ids=["one-chunk", "row-chunks"])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_chain_is_autograd_s_in_one_chunk_or_many_at_any_rank_and_layout(
    name: str, chunked: bool, shape: tuple[int, ...], layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # eq. (5) dJ/dz = dJ/da o f'(z) by torch.autograd through torch's own f, whether the chain runs at once
    # or row by row (a 16-byte chunk budget: one row per chunk, or one entry at rank 1; rows of 16 float64
    # entries are wider than the budget), on a contiguous dJ/da or a strided one (every other entry at rank 1,
    # a transpose otherwise)
    import refbp.nn.chunks

    if chunked:
        monkeypatch.setattr(refbp.nn.chunks, "CHUNK_BYTES", 16)
    act = ACTIVATIONS[name]
    gen = torch.Generator().manual_seed(17)
    z = torch.randn(shape, dtype=DTYPE, generator=gen)
    if len(shape) == 1:
        dJ_da = torch.randn(2 * shape[0], dtype=DTYPE, generator=gen)[::2]
    else:
        dJ_da = torch.randn(*shape[:-2], shape[-1], shape[-2], dtype=DTYPE, generator=gen).transpose(-1, -2)
    if layout == "contiguous":
        dJ_da = dJ_da.contiguous()
    assert dJ_da.shape == shape and dJ_da.is_contiguous() == (layout == "contiguous")
    leaf = z.clone().requires_grad_()
    (expected,) = torch.autograd.grad(act.torch_fn(leaf), leaf, dJ_da)
    t = act.f(z) if act.derivative_of == "a" else z
    torch.testing.assert_close(act.chain(t, dJ_da), expected)  # dJ/da itself: its layout as given
