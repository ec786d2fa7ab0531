"""Second order of the GPT's layers (refbp.nn.position, attention, transformer) and of the GPT
itself: the manual H v, G v and tangents R{a(l)} against torch.func forward-over-reverse, double
backward and differences of the manual gradient (refbp.verify.second_order), and a wrong rule
of each layer caught."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import refbp
from refbp.models.gpt import GPT
from refbp.nn.attention import AttentionTangent, CausalSelfAttention
from refbp.nn.keys import Key
from refbp.nn.layer import Layer, LayerGradients, LayerTangent, Params, SecondContext
from refbp.nn.layers import Elementwise, Linear
from refbp.nn.network import Network
from refbp.nn.position import PositionEmbedding
from refbp.nn.transformer import ATTENTION_HALF, MLP_HALF, Block, RowLayerNorm, RowStats, RowTangent
from refbp.verify.result import CheckResult
from refbp.verify.second_order import SECOND_ORDER_REFERENCES, check_second_order, random_direction

PRODUCTS = ("hessian", "gauss_newton")

SPREAD = 0.4
"""The standard deviation added to every parameter of a test network: nanoGPT's initial weights
(0.02, LayerNorm 1 and biases 0) make attention nearly uniform and hide terms multiplied by a
bias or a gamma - 1; this much makes every term of the rules count."""


def _randn(g: torch.Generator, *shape: int, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _spread(net: Network, g: torch.Generator) -> Network:
    """``net`` with SPREAD of noise added to every parameter in place (a tied one once)."""
    for p in net.parameters().values():
        p.add_(_randn(g, *p.shape, dtype=p.dtype), alpha=SPREAD)
    return net


def assert_every_row(result: CheckResult, net: Network, product: str, *, X: Tensor) -> None:
    """Passed, with H v of every parameter (and of X when it is floating) against every reference of
    the product, and every tangent R{a(l)}, R{J} (and, for H v, every R{dJ/da(l)}) checked."""
    assert result.passed, result.failure_message()
    names = {row.name for row in result.rows}
    inputs = ["X"] if X.is_floating_point() else []
    Hv = {f"Hv[{name}]" for name in [*net.parameters(), *inputs]}
    tangents = {"R{J}", *(f"R{{a{l}}}" for l in range(1, net.L + 1))}
    assert Hv | tangents <= names
    for name in Hv:
        expected = set(SECOND_ORDER_REFERENCES) if product == "hessian" else {"torch-gauss-newton"}
        assert {row.reference for row in result.rows if row.name == name} == expected, name
    if product == "hessian":
        assert {f"R{{dJ/da{l}}}" for l in range(1, net.L + 1)} <= names


def assert_caught(result: CheckResult, expected: set[str]) -> None:
    """Failed, with each ``expected`` tensor a mismatch."""
    assert not result.passed
    verdicts = {t.name: t.verdict for t in result.tensors}
    assert {name: verdicts[name] for name in expected} == dict.fromkeys(expected, "mismatch")


# ---- the GPT ------------------------------------------------------------------------------------------
def _gpt(g: torch.Generator, *, dtype: torch.dtype = torch.float64, **options: Any) -> tuple[GPT, Tensor, Tensor]:
    """A tiny GPT (vocab 7, n_embd 8, 2 heads, T 4), its parameters spread, a batch of 2 and targets
    with one ignored (-1)."""
    config = {"n_layer": 2, **options}
    net = GPT.random(vocab_size=7, block_size=5, n_head=2, n_embd=8, seed=3, dtype=dtype, **config)
    _spread(net, g)
    idx = torch.randint(0, 7, (2, 4), generator=g)
    targets = torch.randint(0, 7, (2, 4), generator=g)
    targets[1, 2] = -1  # nanoGPT's ignored target: not counted by the loss, nor by its Hessian
    return net, idx, targets


GPTS: dict[str, dict[str, Any]] = {
    "tied, exact GELU, eval with dropout 0.1": {"dropout": 0.1, "training": False},
    "untied (minGPT), tanh GELU, eval": {"tied": False, "gelu": "tanh", "dropout": 0.1, "training": False},
    "tied, tanh GELU, training, p = 0": {"gelu": "tanh"},
    "untied, exact GELU, no biases, one layer": {"tied": False, "bias": False, "n_layer": 1},
}


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("kind", list(GPTS))
def test_gpt_products_and_tangents_agree_with_torch(kind: str, product: str) -> None:
    """H v and G v of every parameter (a tied head's uses summed), every block's tangents
    (R{q}, R{att}, R{resid}, ...) and, for H v, every R{dJ/d(intermediate)}."""
    options = dict(GPTS[kind])
    training = options.pop("training", True)
    net, idx, targets = _gpt(torch.Generator().manual_seed(len(kind)), **options)
    net.train(training)
    result = check_second_order(net, idx, targets, product=product, forward=True, seed=1)
    assert_every_row(result, net, product, X=idx)
    names = {row.name for row in result.rows}
    assert {"R{att4.2}", "R{q4.2}", "R{resid4}", "R{a4.6}"} <= names  # inside the first block
    if product == "hessian":
        assert {"R{dJ/datt4.2}", "R{dJ/dv4.2}", "R{dJ/dxhat4.1}", "R{dJ/dresid4}"} <= names


EXAMPLES = max(3, settings().max_examples // 20)
"""Random GPT shapes per run: a twentieth of the profile's budget (each example checks H v at every
parameter, tangent and intermediate)."""


@settings(max_examples=EXAMPLES)
@given(
    n_head=st.integers(1, 2), head_size=st.integers(1, 3), T=st.integers(1, 4), B=st.integers(1, 2),
    tied=st.booleans(), bias=st.booleans(), gelu=st.sampled_from(["exact", "tanh"]),
)  # fmt: skip
def test_random_gpt_shapes_products_and_tangents_agree_with_torch(
    n_head: int, head_size: int, T: int, B: int, tied: bool, bias: bool, gelu: str
) -> None:
    """Any head count and size, sequence length (one position included: P = 1, R{P} = 0) and batch."""
    g = torch.Generator().manual_seed(T + 10 * B)
    net = GPT.random(vocab_size=5, block_size=4, n_layer=1, n_head=n_head, n_embd=n_head * head_size, tied=tied,
                     bias=bias, gelu=gelu, seed=B)  # fmt: skip
    _spread(net, g)
    idx, targets = torch.randint(0, 5, (B, T), generator=g), torch.randint(0, 5, (B, T), generator=g)
    result = check_second_order(net, idx, targets, forward=True, seed=T)
    assert_every_row(result, net, "hessian", X=idx)


def test_float32_gpt_passes_against_float64_references() -> None:
    net, idx, targets = _gpt(torch.Generator().manual_seed(11), dtype=torch.float32)
    for product in PRODUCTS:
        result = check_second_order(net, idx, targets, product=product, forward=True, seed=2)
        assert_every_row(result, net, product, X=idx)


def test_hvp_of_a_tied_gpt_is_the_sum_over_both_uses_of_the_embedding() -> None:
    """refbp.hvp through the network loop: (H v)_E of a tied GPT is the embedding's share plus
    the head's, and differs from the same GPT untied (the head's share then goes to its own W)."""
    g = torch.Generator().manual_seed(5)
    tied, idx, targets = _gpt(g, n_layer=1)
    state = {name: t.clone() for name, t in tied.state_dict().items()}
    untied = GPT.from_state_dict(state, n_head=2, tied=False)
    v = random_direction(tied, idx, 3)
    v_untied = {**v, str(untied.names_of()["lm_head.weight"]): v["E1"]}  # the same direction on both uses
    Hv_tied = refbp.hvp(tied, idx, targets, v).Hv
    Hv_untied = refbp.hvp(untied, idx, targets, v_untied).Hv
    head = str(untied.names_of()["lm_head.weight"])
    torch.testing.assert_close(Hv_tied["E1"], Hv_untied["E1"] + Hv_untied[head], rtol=1e-10, atol=1e-12)


# ---- the layers alone ----------------------------------------------------------------------------------
WEIGHT = 0.5
"""The standard deviation of the layers' random weights: curved enough that every term of a rule
counts, not so curved that differences of the gradient lose their precision."""


def _attention(g: torch.Generator, *, bias: bool = True, dropout: float = 0.0, cls: type = CausalSelfAttention) -> Any:
    d, w = 6, WEIGHT
    return cls(
        _randn(g, 3 * d, d) * w, _randn(g, d, d) * w, _randn(g, 3 * d) * w if bias else None,
        _randn(g, d) * w if bias else None, n_head=3, dropout=dropout,
    )  # fmt: skip


def _block(g: torch.Generator, *, gelu: str = "exact", cls: type = Block, attention: Any = None) -> Any:
    d = 6
    attn = _attention(g) if attention is None else attention
    ln_1, ln_2 = (RowLayerNorm(1.0 + _randn(g, d) * SPREAD, _randn(g, d) * SPREAD) for _ in range(2))
    w = WEIGHT
    c_fc, c_proj = (
        Linear(_randn(g, 4 * d, d) * w, _randn(g, 4 * d) * w),
        Linear(_randn(g, d, 4 * d) * w, _randn(g, d) * w),
    )
    return cls(ln_1, attn, ln_2, c_fc, c_proj, gelu=gelu)


def _sequence_net(layer: Layer, g: torch.Generator, *, T: int = 4) -> tuple[Network, Tensor, Tensor]:
    """``layer`` on (2, T, 6) inputs, then tanh and a Linear to 3, with mse."""
    net = Network([layer, Elementwise("tanh"), Linear(_randn(g, 3, 6), _randn(g, 3))], "mse")
    return net, _randn(g, 2, T, 6), _randn(g, 2, T, 3)


LAYERS = {
    "attention": lambda g: _attention(g),
    "attention, no biases": lambda g: _attention(g, bias=False),
    "block, exact GELU": lambda g: _block(g),
    "block, tanh GELU": lambda g: _block(g, gelu="tanh"),
    "row LayerNorm": lambda g: RowLayerNorm(1.0 + _randn(g, 6), _randn(g, 6)),
    "row LayerNorm, no bias": lambda g: RowLayerNorm(1.0 + _randn(g, 6), None),
    "row LayerNorm, no affine": lambda g: RowLayerNorm(None, None, d=6),
    "position embedding (T 3 of 5)": lambda g: PositionEmbedding(_randn(g, 5, 6)),
}


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("kind", list(LAYERS))
def test_layer_products_and_tangents_agree_with_torch(kind: str, product: str) -> None:
    g = torch.Generator().manual_seed(len(kind))
    net, X, y = _sequence_net(LAYERS[kind](g), g, T=3 if "position" in kind else 4)
    result = check_second_order(net, X, y, product=product, forward=True, seed=4)
    assert_every_row(result, net, product, X=X)


def test_train_mode_dropout_is_differentiated_at_its_masks() -> None:
    """Attention's dropout on the probabilities and the block's residual dropouts, in training
    mode with p > 0: H v at the drawn masks equals torch.func forward-over-reverse of the oracle
    run with the same masks."""
    g = torch.Generator().manual_seed(8)
    block = _block(g, attention=_attention(g, dropout=0.3))
    block.inner[2].p = block.inner[7].p = 0.2  # the residual dropouts (attention's own is 0.3)
    net, X, y = _sequence_net(block, g)
    noise = net.forward(X).noise
    assert {(1, 2), (1, 3), (1, 8)} <= set(noise)  # attention's mask and both residual ones
    v = random_direction(net, X, 6)
    manual = refbp.hvp(net, X, y, v, noise=noise).Hv
    params = {name: t.detach() for name, t in net.parameters().items()}

    def J(p: dict[str, Tensor], x: Tensor, target: Tensor) -> Tensor:
        return net.torch_J(x, target, Params({Key.parse(n): t for n, t in p.items()}, net.ties), noise)

    # the targets ride along with a materialised zero tangent (mse's double backward cannot take torch.func's
    # ZeroTensor), as refbp.verify.second_order does
    v_params = {name: v[name] for name in params}
    primals, tangents = (params, X, y), (v_params, v["X"], torch.zeros_like(y))
    Hp, HX = torch.func.jvp(torch.func.grad(J, argnums=(0, 1)), primals, tangents)[1]
    for name, reference in {**Hp, "X": HX}.items():
        torch.testing.assert_close(manual[name], reference, rtol=1e-9, atol=1e-11, msg=name)


# ---- a wrong rule of each layer is caught ----------------------------------------------------------------
class AttentionWithoutTheRowSum(CausalSelfAttention):
    """The slip: R{P} = P o R{S}, the softmax's tangent without rowsum(P o R{S}) (its diagonal only)."""

    def softmax_tangent(self, P: Tensor, RS: Tensor) -> Tensor:
        return P * RS


class AttentionWithoutTheTangentOfP(CausalSelfAttention):
    """The slip: the R-backward treats P as a constant (R{P~}^T dJ/dY and the softmax's R{P} terms dropped)."""

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        kept: AttentionTangent = t.cache
        frozen = dataclasses.replace(kept, RP=torch.zeros_like(kept.RP))
        return super().r_backward(g, Rg, x, Rx, out, dataclasses.replace(t, cache=frozen), cache, V, ctx)


class BlockWithoutTheSkipsTangent(Block):
    """The slip: R{dJ/dr} = R{dJ/dr} through the MLP only, the skip path's R{dJ/dy} forgotten."""

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        grads = LayerGradients(None)
        assert Rx is not None
        g_mlp, R_mlp = self._r_back_half(MLP_HALF, g, Rg, cache.resid, t.cache.Rresid, cache, t.cache, V, ctx, grads)
        g_attn, R_attn = self._r_back_half(ATTENTION_HALF, g + g_mlp, R_mlp, x, Rx, cache, t.cache, V, ctx, grads)
        grads.dJ_dx = R_mlp + R_attn
        return g + g_mlp + g_attn, grads


class NormWithoutTheTangentOfRstd(RowLayerNorm):
    """The slip: R{dJ/dx} without rho dJ/dx, as if rstd did not move along v."""

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: RowStats,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        kept: RowTangent = t.cache
        frozen = dataclasses.replace(t, cache=dataclasses.replace(kept, rho=torch.zeros_like(kept.rho)))
        return super().r_backward(g, Rg, x, Rx, out, frozen, cache, V, ctx)


class PositionEmbeddingOfTheLastSequence(PositionEmbedding):
    """The slip: (H v)_P[t] = R{dJ/dy}[B - 1, t], one sequence's instead of the sum over the batch."""

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        g_x, R = super().r_backward(g, Rg, x, Rx, out, t, cache, V, ctx)
        R.params["P"][: Rg.shape[1]] = Rg[-1]
        return g_x, R


WRONG: dict[str, tuple[Any, set[str]]] = {
    "softmax tangent without the row sum": (
        lambda g: _attention(g, cls=AttentionWithoutTheRowSum), {"R{att1}", "R{a1}", "Hv[W_qkv1]", "Hv[X]"}
    ),
    "R-backward without R{P}": (
        lambda g: _attention(g, cls=AttentionWithoutTheTangentOfP), {"Hv[W_qkv1]", "Hv[X]"}
    ),
    "block without the skip's R": (
        lambda g: _block(g, cls=BlockWithoutTheSkipsTangent), {"Hv[W_qkv1.2]", "Hv[gamma1.1]", "Hv[X]"}
    ),
    "LayerNorm without R{rstd}": (lambda g: NormWithoutTheTangentOfRstd(1.0 + _randn(g, 6), _randn(g, 6)), {"Hv[X]"}),
    "position embedding of one sequence": (lambda g: PositionEmbeddingOfTheLastSequence(_randn(g, 4, 6)), {"Hv[P1]"}),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(WRONG))
def test_a_rule_with_a_term_dropped_is_caught(kind: str) -> None:
    build, expected = WRONG[kind]
    g = torch.Generator().manual_seed(9)
    net, X, y = _sequence_net(build(g), g)
    assert_caught(check_second_order(net, X, y, forward=True, seed=5), expected)


def test_the_benchmarked_gpt_routes_compute_the_same_product() -> None:
    """benchmarks/hvp.py times four routes to one H v of a GPT: they must agree, or the ratio means nothing."""
    from benchmarks.hvp import Case, case_routes

    results = {name: fn() for name, fn in case_routes(Case("gpt", (1, 8, 4, 2), "float64")).items()}
    manual = results["manual"]
    assert isinstance(manual, dict)
    for other in ("manual, H v only", "forward-over-reverse", "double backward"):
        theirs = results[other]
        values = list(theirs.values()) if isinstance(theirs, dict) else list(theirs)  # type: ignore[call-overload]
        assert len(values) == len(manual)
        for name, t in zip(manual, values, strict=True):
            torch.testing.assert_close(manual[name], t, rtol=1e-10, atol=1e-12, msg=f"{other}: {name}")
