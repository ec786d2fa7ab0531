"""The curriculum's losses (issue 18): multi_margin (the SVM hinge), nll after a LogSoftmax,
reduction="sum" beside the mean, and class losses over (B, T, C) outputs of any network, each
against torch's own torch.nn.functional and autograd on the very torch module; refbp.check
passes them, fails a wrong gradient, and leaves a point exactly on the hinge unverified by
finite differences instead of failing it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import refbp
from refbp.distributed.normalisation import is_mean, share, terms
from refbp.nn.convert import from_torch
from refbp.nn.layers import Linear
from refbp.nn.losses import IGNORE_INDEX, Loss, get_loss, half_sse, mse, multi_margin, nll
from refbp.nn.network import Network
from tests.test_convert import assert_same, gradient_rounding

CLASS_LOSSES = ("cross_entropy", "nll", "multi_margin")


def _torch_F(name: str, reduction: str) -> Callable[[Tensor, Tensor], Tensor]:
    """torch's own function for ``name``, written here from torch.nn.functional (not the record's
    oracle), on outputs (..., C) flattened to (M', C) as torch's class losses take them."""
    flat: dict[str, Callable[..., Tensor]] = {
        "cross_entropy": F.cross_entropy, "nll": F.nll_loss, "multi_margin": F.multi_margin_loss,
    }  # fmt: skip
    if name in flat:
        return lambda out, y: flat[name](out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction=reduction)
    if name == "bce":
        return lambda p, y: F.binary_cross_entropy(p, y, reduction=reduction)
    return lambda out, y: F.mse_loss(out, y, reduction=reduction)


@st.composite
def _points(draw: st.DrawFn) -> tuple[str, str, Tensor, Tensor]:
    """A loss, a reduction and a float64 point (y_hat, y): 1 or 2 leading dimensions (a batch,
    or a batch of sequences), C = 2..4; class targets sometimes ignored (at least one counted)."""
    name = draw(st.sampled_from(("mse", "bce", *CLASS_LOSSES)))
    reduction = draw(st.sampled_from(("mean", "sum")))
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    C = draw(st.integers(2, 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    out = torch.randn((*lead, C), dtype=torch.float64, generator=g) * 2
    if name == "bce":
        return name, reduction, torch.sigmoid(out), torch.rand((*lead, C), dtype=torch.float64, generator=g)
    if name == "mse":
        return name, reduction, out, torch.randn((*lead, C), dtype=torch.float64, generator=g)
    y = torch.randint(0, C, lead, generator=g)
    if name != "multi_margin" and draw(st.booleans()):
        ignored = torch.rand(lead, generator=g) < 0.4
        ignored.view(-1)[0] = False
        y = torch.where(ignored, IGNORE_INDEX, y)
    return name, reduction, torch.log_softmax(out, dim=-1) if name == "nll" else out, y


@given(_points())
def test_each_loss_and_reduction_matches_torch_functional_and_autograd(point: tuple[str, str, Tensor, Tensor]) -> None:
    name, reduction, y_hat, y = point
    loss = get_loss(name, reduction=reduction)
    leaf = y_hat.clone().requires_grad_(True)
    J = _torch_F(name, reduction)(leaf, y)
    (dJ_dy_hat,) = torch.autograd.grad(J, leaf)
    assert loss.reduction == reduction
    torch.testing.assert_close(loss.value(y_hat, y), J.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(loss.gradient(y_hat, y), dJ_dy_hat, rtol=1e-12, atol=1e-14)


def test_a_name_is_the_mean_and_half_sse_is_a_sum() -> None:
    assert all(get_loss(name).reduction == "mean" for name in ("mse", "bce", *CLASS_LOSSES))
    assert get_loss("half_sse").reduction == "sum" and get_loss("half_sse", reduction="sum").reduction == "sum"
    assert get_loss("mse", reduction="sum").reduction == "sum" and mse(reduction="sum").reduction == "sum"
    assert not is_mean(mse(reduction="sum")) and is_mean(get_loss("multi_margin"))


# ---- through whole networks, against autograd on the torch module ----------------------------------
def _module(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """``build()`` in float64 with its parameters drawn from ``seed`` (torch's global RNG left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build().to(torch.float64)


def _run(module: nn.Module, x: Tensor) -> Tensor:
    """The module's output, each nn.LSTM passing on its output sequence (not its final states),
    as in a character model's ``Sequential(Embedding, LSTM(batch_first=True), Linear)``."""
    for child in module.children():
        out = child(x)
        x = out[0] if isinstance(child, nn.LSTM) else out
    return x


def _same_as_autograd(module: nn.Module, loss: Loss, X: Tensor, y: Tensor, reduction: str) -> None:
    net = from_torch(module, loss=loss)
    grads = net.backward(net.forward(X), y)
    module.zero_grad()
    inp = X.clone().requires_grad_() if X.is_floating_point() else X
    _torch_F(loss.name, reduction)(_run(module, inp), y).backward()
    expected = {name: p.grad for name, p in module.named_parameters()}
    if X.is_floating_point():
        expected["input"] = inp.grad
    assert_same(grads.torch_named(), expected, gradient_rounding(grads))  # type: ignore[arg-type]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    ("name", "tail"),
    [("nll", [nn.LogSoftmax(-1)]), ("multi_margin", []), ("cross_entropy", []), ("mse", [])],
    ids=["nll-after-logsoftmax", "multi_margin", "cross_entropy", "mse"],
)
def test_a_converted_network_with_each_loss_agrees_with_autograd(
    name: str, tail: list[nn.Module], reduction: str
) -> None:
    module = _module(lambda: nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), *tail))
    g = torch.Generator().manual_seed(1)
    X = torch.randn(6, 3, dtype=torch.float64, generator=g)
    loss = get_loss(name, reduction=reduction)
    y = loss.sample_targets((6, 4), g)
    _same_as_autograd(module, loss, X, y, reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["cross_entropy", "nll", "multi_margin"])
def test_a_character_model_takes_B_by_T_targets_for_any_class_loss(name: str, reduction: str) -> None:
    """Embedding -> LSTM -> Linear (-> LogSoftmax for nll): logits (B, T, V), targets (B, T),
    as F.* takes them flattened: the same loss code path as the GPT's."""
    tail = [nn.LogSoftmax(-1)] if name == "nll" else []
    module = _module(lambda: nn.Sequential(nn.Embedding(5, 3), nn.LSTM(3, 4, batch_first=True), nn.Linear(4, 5), *tail))
    g = torch.Generator().manual_seed(2)
    X = torch.randint(0, 5, (2, 3), generator=g)  # (B, T) tokens
    y = torch.randint(0, 5, (2, 3), generator=g)  # (B, T) next tokens
    if name != "multi_margin":
        y[0, 1] = IGNORE_INDEX
    _same_as_autograd(module, get_loss(name, reduction=reduction), X, y, reduction)


# ---- refbp.check -------------------------------------------------------------------------------------
def _small_net(loss: Loss) -> tuple[Network, Tensor, Tensor]:
    module = _module(lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)), seed=3)
    g = torch.Generator().manual_seed(4)
    X = torch.randn(4, 3, dtype=torch.float64, generator=g)
    return from_torch(module, loss=loss), X, loss.sample_targets((4, 3), g)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["nll", "multi_margin", "mse", "cross_entropy"])
def test_refbp_check_passes_each_loss_and_reduction(name: str, reduction: str) -> None:
    net, X, y = _small_net(get_loss(name, reduction=reduction))
    result = refbp.check(net, X, y)
    result.raise_if_failed()


def test_a_sum_whose_gradient_is_divided_by_N_fails_check_and_says_so() -> None:
    right = mse(reduction="sum")
    wrong = dataclasses.replace(right, gradient=lambda y_hat, y: right.gradient(y_hat, y) / y_hat.shape[0])
    net, X, y = _small_net(wrong)
    result = refbp.check(net, X, y)
    assert not result.passed
    assert any("an extra 1/N? N = 4" in row.note for row in result.rows if row.verdict == "mismatch")


def _on_the_hinge() -> tuple[Tensor, Tensor, Tensor]:
    """W, X, y with z = X W^T exactly on a hinge: row 0 has z = (2, 1, 0), y = 0, so
    t_01 = 1 - z_0 + z_1 = 0; every other hinge argument is 1.25, 1.5 or -1."""
    W = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)  # (C, d_in)
    X = torch.tensor([[1.0, 0.5], [0.25, 1.0]], dtype=torch.float64)  # (N, d_in)
    return W, X, torch.tensor([0, 2])


def _correct_class_once(z: Tensor, y: Tensor) -> Tensor:
    """multi_margin's dJ/dz with -1 at the correct class for a row with any active margin, instead
    of minus their count: z_y appears in every margin of its row, not once."""
    N, C = z.shape
    t = 1.0 - z.gather(1, y[:, None]) + z  # (N, C)
    active = (t > 0).scatter_(1, y[:, None], False).to(z.dtype)
    once = (active.sum(dim=1, keepdim=True) > 0).to(z.dtype)
    return active.scatter_(1, y[:, None], -once) / (N * C)


def test_a_point_on_the_hinge_is_unverified_by_differences_and_passes() -> None:
    W, X, y = _on_the_hinge()
    result = refbp.check(Network([Linear(W)], multi_margin()), X, y)
    fd = {row.name: row for row in result.rows if row.reference.startswith("fd")}
    assert result.passed
    assert fd["W1"].n_excluded > 0 and fd["W1"].verdict in ("partial", "unverified")
    assert fd["a1"].n_excluded > 0 and fd["a1"].verdict != "mismatch"


def test_a_hinge_that_credits_the_correct_class_once_fails_check() -> None:
    net, X, y = _small_net(multi_margin())
    wrong = dataclasses.replace(multi_margin(), gradient=_correct_class_once)
    result = refbp.check(Network(net.layers, wrong), X, y)
    assert net.loss_fn.gradient(net.forward(X).y_hat, y).ne(_correct_class_once(net.forward(X).y_hat, y)).any()
    assert not result.passed
    assert {row.name for row in result.rows if row.verdict == "mismatch"} >= {"a3", "X"}


@pytest.mark.parametrize(
    ("loss", "activations"),
    [(multi_margin(reduction="sum"), ["relu", "identity"]), (nll(reduction="sum"), ["tanh", "tanh"])],
    ids=["multi_margin-sum", "nll-sum-after-tanh"],
)
def test_an_mlp_takes_a_loss_record_and_check_passes_it(loss: Loss, activations: list[str]) -> None:
    net = refbp.MLP.random([3, 4, 3], activations=activations, loss=loss, seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(6)
    X, y = torch.randn(5, 3, dtype=torch.float64, generator=g), loss.sample_targets((5, 3), g)
    cache = net.forward(X)
    torch.testing.assert_close(net.loss(cache, y), _torch_F(loss.name, "sum")(cache.y_hat, y))
    refbp.check(net, X, y).raise_if_failed()
    with pytest.raises(ValueError, match=r"loss='multi_margin' needs d_L >= 2 classes in the last layer, got 1"):
        refbp.MLP.random([3, 1], activations=["identity"], loss="multi_margin")


# ---- distributed: a summed loss is its shards' sums ------------------------------------------------
@pytest.mark.parametrize("name", ["mse", "cross_entropy", "nll", "multi_margin"])
def test_a_summed_loss_over_shards_is_the_sum_of_their_losses(name: str) -> None:
    loss = get_loss(name, reduction="sum")
    g = torch.Generator().manual_seed(5)
    y_hat = torch.randn(5, 3, dtype=torch.float64, generator=g)
    y = loss.sample_targets((5, 3), g)
    parts = [(y_hat[:2], y[:2]), (y_hat[2:], y[2:])]
    M = sum(terms(loss, y_r) for _, y_r in parts)
    J = sum(share(loss, terms(loss, y_r), M) * loss.value(y_hat_r, y_r) for y_hat_r, y_r in parts)
    torch.testing.assert_close(J, loss.value(y_hat, y))


# ---- misuse ------------------------------------------------------------------------------------------
def test_nll_after_a_layer_that_is_not_logsoftmax_is_accepted_as_torch_accepts_it() -> None:
    module = _module(lambda: nn.Sequential(nn.Linear(3, 4)))
    X, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 3, 1, 2, 0])
    _same_as_autograd(module, nll(), X, y, "mean")


@pytest.mark.parametrize(
    ("y", "error", "message"),
    [
        (torch.zeros(2, 3), TypeError, r"y must hold int64 class indices for loss='nll', got .*float32"),
        (torch.zeros(6, dtype=torch.int64), ValueError,
         r"y must have shape \(2, 3\) for loss='nll', got shape \(6,\).*: y_hat's shape \(2, 3, 5\) without its last"),
        (torch.tensor([[0, 5, 1], [0, 0, 0]]), ValueError, r"y\[\(0, 1\)\] = 5 is not a class index; expected 0 <= y"),
    ],
    ids=["float-targets", "flattened-targets", "out-of-range"],
)  # fmt: skip
def test_wrong_sequence_targets_name_the_argument_and_the_expected_form(
    y: Tensor, error: type[Exception], message: str
) -> None:
    net = from_torch(_module(lambda: nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5))), loss="nll")
    cache = net.forward(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(error, match=message):
        net.backward(cache, y)


def test_multi_margin_has_no_ignore_index_and_refuses_minus_100() -> None:
    net, X, _ = _small_net(multi_margin())
    with pytest.raises(ValueError, match=r"y\[1\] = -100 is not a class index; expected 0 <= y < 3$"):
        net.backward(net.forward(X), torch.tensor([0, -100, 1, 2]))


def test_a_summed_cross_entropy_of_only_ignored_targets_is_zero_as_torch() -> None:
    z, y = torch.randn(3, 4, dtype=torch.float64), torch.full((3,), IGNORE_INDEX)
    loss = get_loss("cross_entropy", reduction="sum")
    assert loss.check_targets(y, z) is y
    torch.testing.assert_close(loss.value(z, y), F.cross_entropy(z, y, reduction="sum"))
    with pytest.raises(ValueError, match="the mean has no terms"):
        get_loss("cross_entropy").check_targets(y, z)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: get_loss("mse", reduction="avg"), r"reduction='avg' for loss='mse'; expected one of \['mean', 'sum"),
        (lambda: mse(reduction="none"), r"reduction='none' for loss='mse'; expected one of \['mean', 'sum'\]"),
        (lambda: half_sse(reduction="mean"), r"reduction='mean' for loss='half_sse'; expected 'sum'.*use loss='mse'"),
        (lambda: get_loss(mse(), reduction="sum"), r"a record with reduction='mean'.*losses.mse\(reduction='sum'\)"),
        (lambda: get_loss("hinge"), r"loss='hinge' is not a known loss; expected one of \[.*'multi_margin', 'nll'\]"),
    ],
    ids=["get_loss", "factory", "half_sse-mean", "record-and-reduction", "unknown"],
)  # fmt: skip
def test_a_bad_reduction_or_name_is_refused_naming_what_was_expected(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ---- layer specs (refbp check --case) ---------------------------------------------------------------
def test_a_stack_spec_takes_a_reduction_and_round_trips_it() -> None:
    from refbp.verify.specs import spec_from_dict

    data = {"input": 3, "layers": [["linear", 4], ["tanh"], ["linear", 3]], "loss": "multi_margin", "seed": 0}
    spec = spec_from_dict({**data, "reduction": "sum"})
    case = spec.build()
    assert case.net.loss_fn.reduction == "sum" and spec_from_dict(spec.to_dict()) == spec
    torch.testing.assert_close(
        case.net.loss(case.net.forward(case.X), case.y),
        F.multi_margin_loss(case.net.forward(case.X).y_hat, case.y, reduction="sum"),
    )
    assert "reduction" not in spec_from_dict(data).to_dict()  # JSON without one stays as it was
    refbp.check(case.net, case.X, case.y).raise_if_failed()
    with pytest.raises(ValueError, match=r"reduction='none' for loss='multi_margin'; expected one of"):
        spec_from_dict({**data, "reduction": "none"})


def test_the_trained_regime_refuses_nll_whose_J_has_no_floor_on_an_mlp() -> None:
    """nll on an MLP's free outputs is -z[y]: gradient descent runs the weights to infinity (the
    report's trained cases reached 1e162 and J = -inf), so the regime refuses it and the sweep
    draws such networks plain."""
    import random

    from refbp.apps.sweep import _random_mlp
    from refbp.verify.cases import CaseSpec

    with pytest.raises(ValueError, match=r"regime='trained' with loss='nll': J has no floor"):
        CaseSpec.from_dict({"dims": [3, 2], "activations": ["identity"], "loss": "nll", "regime": "trained"})
    rng = random.Random(0)
    drawn = [_random_mlp(k, rng) for k in range(120)]
    assert {s.regime for s in drawn if s.loss == "nll"} == {"plain", "boundary"}
    assert "trained" in {s.regime for s in drawn if s.loss == "cross_entropy"}
