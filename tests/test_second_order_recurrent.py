"""Second order through time (issue 21): the manual tangents and R-backward of RNN (tanh, relu),
LSTM and GRU layers against torch.func forward-over-reverse, double backward, torch's
Gauss-Newton route and differences of the manual gradient (refbp.verify.check_second_order);
and an R-backward with one term dropped is caught."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from torch import Tensor, nn

from refbp.apps.bug_record import twin_of
from refbp.nn import rnn
from refbp.nn.convert import from_torch
from refbp.nn.gru import GRULayer
from refbp.nn.layers import Linear, recurrent_from_torch
from refbp.nn.lstm import LSTMLayer
from refbp.nn.network import Network
from refbp.nn.recurrent import Recurrent
from refbp.nn.recurrent_layer import RecurrentLayer
from refbp.strategies import RecurrentSpec, recurrent_specs
from refbp.verify.result import CheckResult
from refbp.verify.second_order import check_second_order

PRODUCTS = ("hessian", "gauss_newton")

SMOOTH_KINDS = ("RNN_TANH", "LSTM", "GRU")
"""The cells whose every map is smooth: relu's kink (z_t = 0) is drawn only in a fixed case,
where no difference step crosses it."""


def _character_model(cell: type[nn.Module], T: int) -> tuple[Network, Tensor, Tensor]:
    """Embedding -> cell(2 layers, batch_first) -> Linear, cross_entropy over (B, T, C) logits."""
    torch.manual_seed(0)
    V, d, H = 5, 3, 3
    model = nn.Sequential(nn.Embedding(V, d), cell(d, H, num_layers=2, batch_first=True), nn.Linear(H, V)).double()
    generator = torch.Generator().manual_seed(1)
    X = torch.randint(0, V, (2, T), generator=generator)  # (B, T) characters
    y = torch.randint(0, V, (2, T), generator=generator)  # (B, T) the next characters
    return from_torch(model, loss="cross_entropy"), X, y


def _sequence_model(spec: RecurrentSpec) -> tuple[Network, Tensor, Tensor]:
    """The spec's recurrent module, from its initial state, -> Linear(H, 2), mse at every step."""
    module, x, h0, c0 = spec.build()
    generator = torch.Generator().manual_seed(spec.seed)
    head = Linear(torch.randn(2, spec.hidden_size, dtype=torch.float64, generator=generator))
    net = Network([recurrent_from_torch(module, h0=h0, c0=c0), head], "mse")
    y = torch.randn(net.forward(x).y_hat.shape, dtype=torch.float64, generator=generator)
    return net, x, y


def _recurrent(net: Network) -> tuple[int, Recurrent]:
    """(l, the Recurrent layer at network layer l)."""
    return next((l, layer) for l, layer in enumerate(net.layers, start=1) if isinstance(layer, Recurrent))


def _expected_rows(net: Network, X: Tensor, product: str) -> set[str]:
    """Every row a forward=True check must hold: H v of each parameter (and X when it is
    floating), R{J}, and, every step of every stacked layer, R{each intermediate} (and, for H v,
    R{dJ/d(it)}), the initial states' included."""
    names = {f"Hv[{name}]" for name in net.parameters()} | {"R{J}"}
    if X.is_floating_point():
        names.add("Hv[X]")
    l, layer = _recurrent(net)
    T = X.shape[1] if layer.batch_first else X.shape[0]
    for k, cell in enumerate(layer.layers, start=1):
        keys = [f"{kind}_init{l}.{k}" for kind in cell.state_kinds]
        keys += [f"{kind}{l}.{k}.{t}" for t in range(1, T + 1) for kind in cell.step_kinds]
        names |= {f"R{{{key}}}" for key in keys}
        if product == "hessian":
            names |= {f"R{{dJ/d{key}}}" for key in keys}
    return names


def _passes_with_every_row(net: Network, X: Tensor, y: Tensor, product: str) -> CheckResult:
    result = check_second_order(net, X, y, product=product, forward=True, seed=1)
    assert result.passed, result.failure_message()
    missing = _expected_rows(net, X, product) - {row.name for row in result.rows}
    assert not missing, f"rows missing: {sorted(missing)}"
    return result


# ---- the rules pass against every torch route ----------------------------------------------------
@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN], ids=lambda c: c.__name__)
def test_character_model_products_and_tangents_agree_with_torch(cell: type[nn.Module], product: str) -> None:
    net, X, y = _character_model(cell, T=3)
    result = _passes_with_every_row(net, X, y, product)
    references = {row.reference for row in result.rows if row.name.startswith("Hv[")}
    expected = {"forward-over-reverse", "reverse-over-reverse", "fd-gradient"}
    assert references == (expected if product == "hessian" else {"torch-gauss-newton"})


@settings(max_examples=6)
@given(recurrent_specs(kinds=SMOOTH_KINDS, max_length=4, max_layers=2, max_size=3, max_batch=2))
def test_real_sequence_products_agree_with_torch_in_every_layout(spec: RecurrentSpec) -> None:
    """One or two layers, T 1..4, bias or not, batch_first or time-major, from h0 (and c0) or zeros."""
    net, x, y = _sequence_model(spec)
    for product in PRODUCTS:
        _passes_with_every_row(net, x, y, product)


@pytest.mark.parametrize("kind", ["RNN_RELU", "LSTM"])
def test_given_initial_states_time_major_without_bias(kind: str) -> None:
    """relu's f'' is 0 on each piece (no entry here sits at its kink); the initial states' R{dJ/dh_0}."""
    spec = RecurrentSpec(kind, 2, 3, 2, False, False, length=4, batch=2, initial_state=True, seed=7)
    net, x, y = _sequence_model(spec)
    for product in PRODUCTS:
        _passes_with_every_row(net, x, y, product)


def test_float32_passes_against_the_float64_references() -> None:
    net, X, y = _character_model(nn.LSTM, T=2)
    net32 = net.to(dtype=torch.float32)
    for product in PRODUCTS:
        result = check_second_order(net32, X, y, product=product, forward=True, seed=2)
        assert result.passed, result.failure_message()
        assert result.dtype == "float32"


# ---- a wrong rule is caught -------------------------------------------------------------------------
def _with_cells(net: Network, cls: type[RecurrentLayer]) -> Network:
    """``net`` with every stacked layer of its recurrent layer made a ``cls`` sharing its state."""
    _, layer = _recurrent(net)
    twins = [twin_of(cls)(cell) for cell in layer.layers]
    assert all(isinstance(cell, RecurrentLayer) for cell in twins)
    layer.layers = twins  # type: ignore[assignment]  # checked just above
    return net


def _failed(result: CheckResult) -> set[str]:
    return {t.name for t in result.tensors if t.verdict == "mismatch"}


class LSTMWithoutTheCellPathsR(LSTMLayer):
    def total_R_dJ_dc(self, R_through_h: Tensor, R_from_next: Tensor) -> Tensor:
        return R_through_h  # wrong: R{dJ/dc_(t+1) o f_(t+1)} dropped; the first-order cell path kept


class GRUWithoutTheNextStepsR(GRULayer):
    def total_R_dJ_dh(self, R_dout_t: Tensor, R_from_next: Tensor) -> Tensor:
        return R_dout_t.clone()  # wrong: R{dJ/dh_t} = R{dJ/dout_t}, what step t + 1 hands back dropped


@pytest.mark.parametrize("cls", [LSTMWithoutTheCellPathsR, GRUWithoutTheNextStepsR], ids=lambda c: c.__name__)
def test_an_r_backward_with_a_recurrent_term_dropped_is_caught(cls: type[RecurrentLayer]) -> None:
    cell = nn.LSTM if issubclass(cls, LSTMLayer) else nn.GRU
    net, X, y = _character_model(cell, T=3)
    result = check_second_order(_with_cells(net, cls), X, y, forward=True, seed=1)
    assert not result.passed
    # the hidden weights of the first stacked layer see every step's R through the dropped carry;
    # the tangents (forward mode) are untouched by an R-backward slip
    assert {"Hv[W_hh2.1]", "Hv[W_ih2.1]", "Hv[E1]"} <= _failed(result)
    assert all(row.verdict == "ok" for row in result.rows if row.reference == "forward-mode")


def test_an_rnn_r_backward_without_f_second_is_caught_and_gauss_newton_never_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """R{dJ/dz_t} = R{dJ/dh_t} o f'(z_t) only: the f'' term dropped. Gauss-Newton drops that
    term by definition, so G v stays right: the slip is in H v alone."""
    spec = RecurrentSpec("RNN_TANH", 2, 3, 1, True, True, length=3, batch=2, initial_state=False, seed=3)
    net, x, y = _sequence_model(spec)
    monkeypatch.setattr(rnn, "second_derivative", lambda act, z, a: torch.zeros_like(z))
    result = check_second_order(net, x, y, seed=1)
    assert {"Hv[W_ih1.1]", "Hv[W_hh1.1]", "Hv[X]"} <= _failed(result)
    gauss_newton: Any = check_second_order(net, x, y, product="gauss_newton", seed=1)
    assert gauss_newton.passed, gauss_newton.failure_message()
