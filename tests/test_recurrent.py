"""RNN, LSTM and GRU by hand, checked against torch itself: the manual BPTT's gradients must
equal what torch.autograd computes on the very torch.nn.RNN/LSTM/GRU module (its parameters,
the input, the initial state), every step's intermediates must pass refbp.check, and a BPTT
with a classic mistake must fail it."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import refbp
from benchmarks.recurrent import QUICK_SIZES, autograd_step, make_case, manual_step, oracle_step
from refbp.nn.convert import from_torch
from refbp.nn.gru import GRULayer
from refbp.nn.keys import Key
from refbp.nn.layers import GRU, LSTM, RNN, Linear, TorchLSTM, recurrent_from_torch
from refbp.nn.lstm import LSTMLayer
from refbp.nn.network import Network
from refbp.nn.recurrent import Recurrent
from refbp.nn.recurrent_layer import RecurrentLayer
from refbp.nn.rnn import RNNLayer
from refbp.strategies import RecurrentSpec, recurrent_specs

FLOAT64_ROUNDING: dict[str, Any] = {"rtol": 1e-10, "atol": 1e-12}
"""refbp and torch's fused recurrent kernels add the same float64 terms in other orders (one
matrix product over all steps against one per step): with at most 5 steps of at most 5 units
in 2 layers they differ by a few hundred roundings (eps = 2.2e-16) of the largest term, about
1e-13 of it. 1e-10 relative leaves a 100x margin and is still 1e6 times tighter than any real
gradient bug; 1e-12 absolute covers entries that cancel to about 0."""


def _torch_state(h0: Tensor | None, c0: Tensor | None) -> Any:
    """What torch's forward takes as hx: h0, (h0, c0), or None for zeros."""
    if h0 is None:
        return None
    return (h0, c0) if c0 is not None else h0


def _leaf(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clone().requires_grad_(True)


# ---- the manual gradients against autograd on the torch module itself -------------------------
@given(recurrent_specs())
def test_gradients_match_autograd_on_the_torch_module(spec: RecurrentSpec) -> None:
    module, x, h0, c0 = spec.build()
    net = Network([recurrent_from_torch(module, h0=h0, c0=c0)], "mse")
    cache = net.forward(x)
    y = torch.randn(cache.y_hat.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(spec.seed))
    grads = net.backward(cache, y)

    x_leaf, h0_leaf, c0_leaf = _leaf(x), _leaf(h0), _leaf(c0)
    out, _ = module(x_leaf, _torch_state(h0_leaf, c0_leaf))
    F.mse_loss(out, y).backward()

    torch.testing.assert_close(cache.y_hat, out.detach(), **FLOAT64_ROUNDING)
    named = grads.torch_named()
    assert set(named) == {f"0.{name}" for name, _ in module.named_parameters()} | {"input"}
    for name, p in module.named_parameters():
        torch.testing.assert_close(named[f"0.{name}"], p.grad, **FLOAT64_ROUNDING, msg=name)
    assert x_leaf is not None
    torch.testing.assert_close(grads.dJ_dX, x_leaf.grad, **FLOAT64_ROUNDING)
    for kind, leaf in (("h", h0_leaf), ("c", c0_leaf)):
        for k in range(spec.num_layers) if leaf is not None else ():
            assert leaf is not None and leaf.grad is not None
            torch.testing.assert_close(grads[f"{kind}_init1.{k + 1}"], leaf.grad[k], **FLOAT64_ROUNDING)


@given(recurrent_specs(), st.booleans())
def test_a_lean_training_step_gives_autograds_gradients(spec: RecurrentSpec, head: bool) -> None:
    """The training step (forward keeping only what the backward reads, backward releasing the
    cache): the RNN drops every z_t and writes dJ/dz_t over the rows of dJ/dout it is given,
    directly in the layer's layout; the GRU writes its da_t over its gates and dJ/dh_n over its
    h_n, step by step. It must still give autograd's gradients, with the recurrent module last
    (dJ/dout from the loss) or below a Linear (dJ/dout from the loop)."""
    module, x, h0, c0 = spec.build()
    H = spec.hidden_size
    gen = torch.Generator().manual_seed(spec.seed)
    layers: list[Any] = [recurrent_from_torch(module, h0=h0, c0=c0)]
    W = torch.randn(2, H, dtype=torch.float64, generator=gen)
    if head:
        layers.append(Linear(W.clone()))
    net = Network(layers, "mse")
    cache = net.forward(x, keep_intermediates=False)
    y = torch.randn(cache.y_hat.shape, dtype=torch.float64, generator=gen)
    grads = net.backward(cache, y, intermediates=False, release_cache=True)

    x_leaf, h0_leaf, c0_leaf = _leaf(x), _leaf(h0), _leaf(c0)
    out, _ = module(x_leaf, _torch_state(h0_leaf, c0_leaf))
    F.mse_loss(out @ W.T if head else out, y).backward()
    named = grads.torch_named()
    for name, p in module.named_parameters():
        torch.testing.assert_close(named[f"0.{name}"], p.grad, **FLOAT64_ROUNDING, msg=name)
    assert x_leaf is not None
    torch.testing.assert_close(grads.dJ_dX, x_leaf.grad, **FLOAT64_ROUNDING)


def test_the_lean_rnn_keeps_no_pre_activation_and_the_full_one_every_one() -> None:
    """z_t is what the teaching view and second order read; the first-order backward takes
    f'(z_t) from h_t. A training step's cache keeps none, the full mode every step's."""
    layer = RNN(RNNLayer(torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)))
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    lean = Network([layer], "mse").forward(x, keep_intermediates=False).saved[1].saved[1]
    full = Network([layer], "mse").forward(x).saved[1].saved[1]
    assert lean.gates.numel() == 0 and full.gates.shape == (5, 2, 4)
    torch.testing.assert_close(lean.h, full.h)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH"])
def test_final_states_in_the_cache_match_torchs(kind: str) -> None:
    spec = RecurrentSpec(kind, 3, 4, 2, True, False, length=11, batch=2, initial_state=True, seed=3)
    module, x, h0, c0 = spec.build()
    layer = recurrent_from_torch(module, h0=h0, c0=c0)
    cache = Network([layer], "mse").forward(x)
    _, state = module(x, _torch_state(h0, c0))
    h_n, c_n = state if kind == "LSTM" else (state, None)
    values = layer.cached_values(cache.saved[1], (1,))
    for k in range(2):
        torch.testing.assert_close(values[Key("h", (1, k + 1, 11))], h_n[k], **FLOAT64_ROUNDING)
        if c_n is not None:
            torch.testing.assert_close(values[Key("c", (1, k + 1, 11))], c_n[k], **FLOAT64_ROUNDING)


# ---- refbp.check: autograd on the oracle and finite differences, every step's intermediates ----
def _character_model(cell: type[nn.Module], **options: Any) -> tuple[nn.Sequential, Tensor, Tensor]:
    """Sequential(Embedding, cell(batch_first=True), Linear) over 5 characters, and a batch."""
    torch.manual_seed(0)
    V, d, H = 5, 3, 4
    model = nn.Sequential(nn.Embedding(V, d), cell(d, H, batch_first=True, **options), nn.Linear(H, V)).double()
    generator = torch.Generator().manual_seed(1)
    X = torch.randint(0, V, (2, 4), generator=generator)  # (B, T) characters
    y = torch.randint(0, V, (2, 4), generator=generator)  # (B, T) the next characters
    return model, X, y


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN], ids=lambda c: c.__name__)
def test_check_passes_on_a_character_model_with_cross_entropy_over_every_step(cell: type[nn.Module]) -> None:
    model, X, y = _character_model(cell, num_layers=2)
    net = from_torch(model, loss="cross_entropy", weight_decay=0.01)
    result = refbp.check(net, X, y, fd_mode="full")
    result.raise_if_failed()
    names = {row.name for row in result.rows}
    assert {"h2.2.4", "W_hh2.1", "h_init2.1"} <= names  # every step's state, both stacked layers
    assert {row.reference for row in result.rows} == {"autograd", "fd-full"}


def test_cross_entropy_over_sequence_logits_matches_the_torch_model() -> None:
    """(B, T, C) logits with (B, T) targets: refbp's mean over every step is torch's."""
    model, X, y = _character_model(nn.LSTM)
    net = from_torch(model, loss="cross_entropy")
    grads = net.backward(net.forward(X), y).torch_named()
    emb, lstm, head = model
    logits = head(lstm(emb(X))[0])  # (B, T, C)
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, **FLOAT64_ROUNDING, msg=name)


# ---- deliberately broken BPTT ------------------------------------------------------------------
class _DropsTheNextStep:
    """dJ/dh_t = dJ/dout_t only: what step t + 1 hands back is dropped."""

    def total_dJ_dh(self, dJ_dout_t: Tensor, from_next: Tensor) -> Tensor:
        return dJ_dout_t.clone()


class LSTMDropsTheNextStep(_DropsTheNextStep, LSTMLayer):
    pass


class GRUDropsTheNextStep(_DropsTheNextStep, GRULayer):
    pass


class RNNDropsTheNextStep(_DropsTheNextStep, RNNLayer):
    pass


class LSTMWithoutTheCellPath(LSTMLayer):
    """dJ/dc_t through h_t only: the cell-state path from step t + 1 is missing."""

    def total_dJ_dc(self, through_h: Tensor, from_next: Tensor) -> Tensor:
        return through_h


def _rebuilt(stack: Recurrent, broken: type[RecurrentLayer]) -> Recurrent:
    """The same recurrent stack with each layer's backward replaced by ``broken``'s."""
    layers: list[RecurrentLayer] = []
    for layer in stack.layers:
        weights = (layer.params["W_ih"], layer.params["W_hh"], layer.params.get("b_ih"), layer.params.get("b_hh"))
        if isinstance(layer, RNNLayer):
            assert issubclass(broken, RNNLayer)
            layers.append(broken(*weights, nonlinearity=layer.activation.name, batch_first=True))
        else:
            layers.append(broken(*weights, batch_first=True))
    return type(stack)(*layers)


@pytest.mark.parametrize(
    ("cell", "broken", "wrong"),
    [
        (nn.LSTM, LSTMDropsTheNextStep, "W_hh2.1"),
        (nn.GRU, GRUDropsTheNextStep, "W_hh2.1"),
        (nn.RNN, RNNDropsTheNextStep, "W_hh2.1"),
        (nn.LSTM, LSTMWithoutTheCellPath, "c2.1.1"),
    ],
    ids=["lstm-drops-next-step", "gru-drops-next-step", "rnn-drops-next-step", "lstm-no-cell-path"],
)
def test_broken_bptt_fails_check(cell: type[nn.Module], broken: type[RecurrentLayer], wrong: str) -> None:
    model, X, y = _character_model(cell)
    right = from_torch(model, loss="cross_entropy")
    refbp.check(right, X, y, references=("autograd",)).raise_if_failed()  # the same point passes when right
    stack = right.layers[1]
    assert isinstance(stack, Recurrent)
    net = Network([right.layers[0], _rebuilt(stack, broken), right.layers[2]], "cross_entropy")
    result = refbp.check(net, X, y)
    assert not result.passed
    failed = {t.name for t in result.tensors if not t.passed}
    assert wrong in failed
    assert "W_ih2.1" in failed  # the input weights see every step's gradient too
    assert "E1" in failed  # and so does the embedding below


# ---- keys, conversions, errors ----------------------------------------------------------------
def test_step_keys_parse_and_sort_by_layer_then_step() -> None:
    spec = RecurrentSpec("LSTM", 2, 3, 2, True, True, length=11, batch=1, initial_state=False, seed=0)
    module, x, _, _ = spec.build()
    net = Network([recurrent_from_torch(module)], "mse")
    cache = net.forward(x)
    names = list(net.backward(cache, torch.zeros_like(cache.y_hat)).as_dict())
    assert Key.parse("h1.2.10") == Key("h", (1, 2, 10))
    assert names == net.names()  # the network's order: layer by layer, each step's keys in step order
    assert names.index("h1.1.9") < names.index("h1.1.10") < names.index("W_ih1.2") < names.index("h1.2.1")
    steps = [name for name in names if Key.parse(name).layer[:2] == (1, 1) and len(Key.parse(name).layer) == 3]
    assert len(steps) == 11 * len(LSTMLayer.step_kinds)  # i, f, g, o, c, h at each of the 11 steps


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN], ids=lambda c: c.__name__)
def test_to_torch_computes_the_same_function_inside_a_sequential(cell: type[nn.Module]) -> None:
    kind = "RNN_RELU" if cell is nn.RNN else cell.__name__
    spec = RecurrentSpec(kind, 3, 4, 2, True, True, length=3, batch=2, initial_state=True, seed=5)
    module, x, h0, c0 = spec.build()
    net = Network([recurrent_from_torch(module, h0=h0, c0=c0)], "mse")
    back = net.to_torch()
    assert isinstance(back, nn.Sequential) and isinstance(
        back[0], cell
    )  # torch's own module, its parameter names unchanged
    assert {name for name, _ in back.named_parameters()} == {f"0.{name}" for name, _ in module.named_parameters()}
    expected, _ = module(x, _torch_state(h0, c0))
    torch.testing.assert_close(back(x), expected.detach(), **FLOAT64_ROUNDING)
    again = from_torch(back, loss="mse")  # the stored initial state comes back too
    torch.testing.assert_close(again.forward(x).y_hat, expected.detach(), **FLOAT64_ROUNDING)


def test_torch_lstm_wrapper_takes_an_explicit_state_over_the_stored_one() -> None:
    module = TorchLSTM(2, 3, h0=torch.ones(1, 1, 3), c0=torch.ones(1, 1, 3))
    x = torch.randn(4, 1, 2)
    zeros = (torch.zeros(1, 1, 3), torch.zeros(1, 1, 3))
    torch.testing.assert_close(module(x, zeros), nn.LSTM.forward(module, x, zeros)[0])
    assert not torch.equal(module(x), module(x, zeros))


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (nn.LSTM(2, 3, bidirectional=True), "bidirectional=True is not supported"),
        (nn.LSTM(2, 3, proj_size=2), "proj_size=2 is not supported"),
        (nn.GRU(2, 3, num_layers=2, dropout=0.5), "dropout=0.5 between stacked layers is not supported"),
    ],
    ids=["bidirectional", "proj_size", "dropout"],
)
def test_unsupported_options_are_refused_with_their_name(module: nn.Module, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_torch(nn.Sequential(module), loss="mse")


def test_wrong_initial_state_and_input_are_clear_errors() -> None:
    module = nn.LSTM(2, 3, num_layers=2)
    with pytest.raises(ValueError, match=r"h0 must be \(num_layers, B, H\) = \(2, B, 3\)"):
        recurrent_from_torch(module, h0=torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="c0 is an LSTM's initial cell state"):
        recurrent_from_torch(nn.GRU(2, 3), c0=torch.zeros(1, 4, 3))
    net = Network([recurrent_from_torch(module, h0=torch.zeros(2, 4, 3))], "mse")
    with pytest.raises(ValueError, match=r"needs input \(T, B, d_in\), d_in = 2"):
        net.forward(torch.zeros(5, 4, 7))
    with pytest.raises(ValueError, match="is a batch of 5"):
        net.forward(torch.zeros(3, 5, 2))
    with pytest.raises(TypeError, match="needs one or more LSTMLayers"):
        LSTM(RNNLayer(torch.zeros(3, 2), torch.zeros(3, 3)))
    with pytest.raises(ValueError, match="nonlinearity='gelu'"):
        RNN(RNNLayer(torch.zeros(3, 2), torch.zeros(3, 3), nonlinearity="gelu"))
    with pytest.raises(ValueError, match=r"W_hh must be \(3 H, H\)"):
        GRU(GRULayer(torch.zeros(6, 2), torch.zeros(3, 3)))


def test_lstm_benchmark_steps_compute_the_same_gradients() -> None:
    """benchmarks/recurrent.py times three steps; they must compute the same thing."""
    case = make_case(QUICK_SIZES, num_layers=2, dtype=torch.float64)
    manual = manual_step(case)()
    on_torch, on_oracle = autograd_step(case)(), oracle_step(case)()
    assert manual.dJ_dx is not None
    for reference in (on_torch["input"], on_oracle["input"]):
        torch.testing.assert_close(manual.dJ_dx, reference, **FLOAT64_ROUNDING)
    for key, g in manual.params.items():
        torch.testing.assert_close(g, on_oracle[str(key)], **FLOAT64_ROUNDING)
        torch.testing.assert_close(g, on_torch[case.layer.torch_param_names((1,))[key][2:]], **FLOAT64_ROUNDING)


def test_relu_rnn_reports_its_kinks_at_every_step() -> None:
    """z_t == 0 is relu's kink (torch takes f'(0) = 0): reported per step and stacked layer."""
    W_ih, W_hh = torch.tensor([[1.0], [-1.0]], dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)
    layer = RNN(RNNLayer(W_ih, W_hh, nonlinearity="relu"), RNNLayer(W_hh.clone(), W_hh.clone(), nonlinearity="relu"))
    x = torch.tensor([[[0.0]], [[2.0]]], dtype=torch.float64)  # (T, B, d) = (2, 1, 1): z_1 = 0 exactly
    cache = Network([layer], "mse").forward(x)
    kinks = layer.kinks(cache.saved[1], (1,))
    assert set(kinks) == {Key("z", (1, k, t)) for k in (1, 2) for t in (1, 2)}
    assert kinks[Key("z", (1, 1, 1))].tolist() == [[True, True]]
    assert kinks[Key("z", (1, 1, 2))].tolist() == [[False, False]]  # z_2 = (2, -2)
    assert kinks[Key("z", (1, 2, 2))].all()  # layer 2's weights are 0: always on the kink
    tanh = RNN(RNNLayer(W_ih, W_hh))
    assert tanh.kinks(Network([tanh], "mse").forward(x).saved[1], (1,)) == {}


def test_network_to_converts_the_initial_state_with_the_parameters() -> None:
    spec = RecurrentSpec("LSTM", 2, 3, 2, True, False, length=2, batch=2, initial_state=True, seed=1)
    module, x, h0, c0 = spec.build()
    net = Network([recurrent_from_torch(module, h0=h0, c0=c0)], "mse").to(torch.float32)
    stack = net.layers[0]
    assert isinstance(stack, LSTM)
    for layer in stack.layers:
        assert isinstance(layer, LSTMLayer) and layer.h0 is not None and layer.c0 is not None
        assert layer.h0.dtype == layer.c0.dtype == torch.float32
    expected, _ = module(x, (h0, c0))
    torch.testing.assert_close(net.forward(x.float()).y_hat, expected.detach().float())
