"""Causal self-attention, the position embedding, the transformer block and its LayerNorm, each
checked alone: against torch's own functions, torch.autograd and finite differences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import refbp
from refbp.nn.attention import CausalSelfAttention, causal_mask, softmax_backward
from refbp.nn.layer import BackwardContext, ForwardContext
from refbp.nn.layernorm import LayerNorm
from refbp.nn.linear import Linear
from refbp.nn.network import Network
from refbp.nn.position import PositionEmbedding
from refbp.nn.transformer import Block, RowLayerNorm


def _uniform(generator: torch.Generator, *shape: int, bound: float = 1.0) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.float64).uniform_(-bound, bound, generator=generator)


def _attention(d: int = 6, n_head: int = 2, *, bias: bool = True, dropout: float = 0.0, seed: int = 0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    return CausalSelfAttention(
        _uniform(g, 3 * d, d, bound=d**-0.5), _uniform(g, d, d, bound=d**-0.5),
        _uniform(g, 3 * d) if bias else None, _uniform(g, d) if bias else None,
        n_head=n_head, dropout=dropout, seed=seed,
    )  # fmt: skip


def _block(d: int = 4, n_head: int = 2, *, bias: bool = True, dropout: float = 0.0, seed: int = 0) -> Block:
    g = torch.Generator().manual_seed(seed + 100)

    def norm() -> LayerNorm:
        return LayerNorm(1.0 + 0.5 * _uniform(g, d), _uniform(g, d, bound=0.5) if bias else None)

    fc = Linear(_uniform(g, 4 * d, d, bound=d**-0.5), _uniform(g, 4 * d) if bias else None)
    proj = Linear(_uniform(g, d, 4 * d, bound=(4 * d) ** -0.5), _uniform(g, d) if bias else None)
    attn = _attention(d, n_head, bias=bias, dropout=dropout, seed=seed)
    return Block(norm(), attn, norm(), fc, proj, dropout=dropout, seed=seed)


def _point(B: int, T: int, d: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, d, dtype=torch.float64, generator=g)  # (B, T, d)
    return x, torch.randn(B, T, d, dtype=torch.float64, generator=g)


# ---- the softmax's backward --------------------------------------------------------------------
def test_softmax_backward_is_the_jacobian_applied_row_by_row() -> None:
    g = torch.Generator().manual_seed(0)
    P = torch.softmax(torch.randn(2, 3, 5, 5, dtype=torch.float64, generator=g), dim=-1)
    dJ_dP = torch.randn(2, 3, 5, 5, dtype=torch.float64, generator=g)
    jacobian = torch.diag_embed(P) - P.unsqueeze(-1) * P.unsqueeze(-2)  # (..., T, T) per row: diag(P) - P P^T
    expected = (jacobian @ dJ_dP.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(softmax_backward(P, dJ_dP), expected, rtol=1e-13, atol=1e-15)
    S = torch.randn(4, 7, dtype=torch.float64, generator=g, requires_grad=True)
    upstream = torch.randn(4, 7, dtype=torch.float64, generator=g)
    (dJ_dS,) = torch.autograd.grad(F.softmax(S, dim=-1), S, upstream)
    P2 = torch.softmax(S.detach(), dim=-1)
    torch.testing.assert_close(softmax_backward(P2, upstream.clone(), overwrite=True), dJ_dS, rtol=1e-13, atol=1e-15)


def test_causal_mask_hides_exactly_the_future() -> None:
    mask = causal_mask(4, "cpu")
    assert mask.tolist() == [[t2 > t for t2 in range(4)] for t in range(4)]


# ---- attention ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_forward_equals_torch_scaled_dot_product_attention(bias: bool) -> None:
    attn = _attention(8, 4, bias=bias)
    x, _ = _point(3, 5, 8)
    out, _ = attn.forward(x, ForwardContext(), (1,))
    torch.testing.assert_close(out, attn.to_torch()(x), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    ("n_head", "bias", "dropout", "dtype"),
    [(1, True, 0.0, torch.float64), (2, False, 0.0, torch.float64), (3, True, 0.3, torch.float64),
     (2, True, 0.3, torch.float32)],
)  # fmt: skip
def test_attention_gradients_match_autograd_and_finite_differences(
    n_head: int, bias: bool, dropout: float, dtype: torch.dtype
) -> None:
    net = Network([_attention(6, n_head, bias=bias, dropout=dropout)], "mse").to(dtype=dtype)
    x, y = _point(2, 4, 6)
    result = refbp.check(net, x.to(dtype), y.to(dtype))
    result.raise_if_failed()
    assert {"q1", "k1", "v1", "att1", "y1", "W_qkv1", "W_o1", "X"} <= {t.name for t in result.tensors}


def test_probabilities_rebuilt_in_the_backward_pass_are_the_forward_ones_exactly() -> None:
    attn = _attention(6, 3)
    x, _ = _point(2, 5, 6)
    _, cache = attn.forward(x, ForwardContext(keep_intermediates=True), (1,))
    q, k, _ = attn.heads(cache.qkv)
    assert cache.P is not None
    assert torch.equal(attn.probabilities(q, k), cache.P)
    torch.testing.assert_close(cache.P.sum(dim=-1), torch.ones(2, 3, 5, dtype=torch.float64))
    assert bool((cache.P.tril() == cache.P).all())  # nothing from the future


def test_an_output_position_gets_no_gradient_from_a_later_input() -> None:
    net = Network([_attention(4, 2)], "mse")
    x, _ = _point(2, 5, 4)
    cache = net.forward(x)
    upstream = torch.zeros(2, 5, 4, dtype=torch.float64)
    upstream[:, 2] = 1.0  # J depends on position 2 only
    dJ_dx = net.backward_from(cache, upstream).dJ_dX
    assert bool((dJ_dx[:, 3:] == 0).all()) and bool((dJ_dx[:, :3] != 0).any())


def test_training_mode_cache_gives_the_same_gradients_as_the_teaching_one() -> None:
    attn = _attention(6, 2, dropout=0.25)
    x, g = _point(2, 4, 6)
    full = attn.forward(x, ForwardContext(keep_intermediates=True), (1,))
    lean = attn.forward(x, ForwardContext(keep_intermediates=False, noise={(1,): full[1].mask}), (1,))
    assert lean[1].P is None and torch.equal(full[0], lean[0])
    a = attn.backward(g, x, full[0], full[1], BackwardContext((1,), keep_intermediates=True))
    b = attn.backward(g, x, lean[0], lean[1], BackwardContext((1,), keep_intermediates=False, overwrite=True))
    assert set(b.params) == set(a.params) and not b.intermediates
    for kind in a.params:
        assert torch.equal(a.params[kind], b.params[kind])
    assert a.dJ_dx is not None and b.dJ_dx is not None and torch.equal(a.dJ_dx, b.dJ_dx)


def test_attention_refuses_sizes_that_do_not_fit() -> None:
    W = torch.zeros(6, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"n_head=4 must be an int >= 1 that divides n_embd = 6"):
        CausalSelfAttention(torch.zeros(18, 6, dtype=torch.float64), W, n_head=4)
    with pytest.raises(ValueError, match=r"W_qkv must have shape \(3d, d\) = \(18, 6\)"):
        CausalSelfAttention(torch.zeros(12, 6, dtype=torch.float64), W, n_head=2)
    with pytest.raises(ValueError, match=r"b_o must have shape \(6,\)"):
        CausalSelfAttention(torch.zeros(18, 6, dtype=torch.float64), W, b_o=torch.zeros(5), n_head=2)
    with pytest.raises(ValueError, match=r"needs input \(B, T, 6\), got shape \(2, 6\)"):
        Network([_attention(6, 2)], "mse").forward(torch.zeros(2, 6, dtype=torch.float64))


# ---- position embedding, block, LayerNorm --------------------------------------------------------
def test_position_embedding_gradient_is_summed_over_the_batch() -> None:
    P = torch.randn(5, 3, dtype=torch.float64)
    net = Network([PositionEmbedding(P)], "mse")
    x, y = _point(4, 3, 3)
    refbp.check(net, x, y).raise_if_failed()
    grads = net.backward(net.forward(x), y)
    dJ_dy = grads["a1"]
    torch.testing.assert_close(grads["P1"][:3], dJ_dy.sum(dim=0))
    assert bool((grads["P1"][3:] == 0).all())
    with pytest.raises(ValueError, match=r"T = 6 positions; expected T <= block_size = 5"):
        net.forward(torch.zeros(1, 6, 3, dtype=torch.float64))


@pytest.mark.parametrize(("bias", "dropout"), [(True, 0.0), (False, 0.25)], ids=["bias", "no-bias-dropout"])
def test_block_gradients_match_autograd_and_finite_differences(bias: bool, dropout: float) -> None:
    net = Network([_block(4, 2, bias=bias, dropout=dropout)], "mse")
    x, y = _point(2, 3, 4)
    result = refbp.check(net, x, y)
    result.raise_if_failed()
    names = {t.name for t in result.tensors}
    assert {"a1.1", "att1.2", "resid1", "a1.5", "a1.6", "xhat1.4", "a1", "X"} <= names


def test_block_equals_its_torch_module() -> None:
    block = _block(4, 2)
    x, _ = _point(2, 3, 4)
    out, _ = block.forward(x, ForwardContext(), (1,))
    module = block.to_torch()
    torch.testing.assert_close(out, module(x), rtol=1e-12, atol=1e-14)
    assert "mlp.c_fc.weight" in dict(module.named_parameters())


@pytest.mark.parametrize("affine", ["gamma-beta", "gamma", "none"])
def test_row_layer_norm_gives_layer_norm_gradients(affine: str) -> None:
    g = torch.Generator().manual_seed(3)
    gamma = 1.0 + 0.5 * _uniform(g, 5) if affine != "none" else None
    beta = _uniform(g, 5) if affine == "gamma-beta" else None
    x, y = _point(3, 2, 5)
    plain = Network([LayerNorm(gamma, beta, d=5)], "mse")
    row = Network([RowLayerNorm(gamma, beta, d=5)], "mse")
    refbp.check(row, x, y).raise_if_failed()
    if gamma is not None:  # a network without parameters has no dtype of its own: float64
        refbp.check(row.to(dtype=torch.float32), x.float(), y.float(), references=("autograd",)).raise_if_failed()
    a, b = plain.backward(plain.forward(x), y).as_dict(), row.backward(row.forward(x), y).as_dict()
    assert list(a) == list(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-12, atol=1e-14)


def test_attention_after_another_layer_names_itself_when_handed_a_shape_it_cannot_take() -> None:
    """The network checks its first layer's input before the pass; attention at place 2, handed
    (N, d) rows by a Linear, says what it needs instead of failing inside torch."""
    g = torch.Generator().manual_seed(0)
    net = Network([Linear(_uniform(g, 6, 4), _uniform(g, 6)), _attention(d=6)], "mse")
    with pytest.raises(ValueError, match=r"layer 2 \(.*\) needs input \(B, T, 6\), got .*\(5, 6\)"):
        net.forward(torch.randn(5, 4, dtype=torch.float64))
    assert net.forward(torch.randn(2, 5, 4, dtype=torch.float64)).y_hat.shape == (2, 5, 6)  # (B, T, d) passes
