"""refbp.models.GPT: interchangeable with nanoGPT's state dict, and every gradient equal to
torch.autograd on an independent nanoGPT-style module (tests/nanogpt_reference.py), to float64
rounding; property tests against autograd and finite differences over drawn tiny GPTs."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from hypothesis import given, settings

import refbp
import refbp.nn.chunks
from refbp.apps.cli import main
from refbp.models import GPT, GPTConfig
from refbp.models.gpt_cases import GPTSpec, gpt_specs, gpts
from refbp.nn.transformer import Block
from refbp.verify.cases import Case
from tests import nanogpt_reference as reference

FLOAT64_ROUNDING = 1e-12
"""Normwise relative distance allowed between refbp's gradients and autograd's in float64:
both round at 1.1e-16 and these models sum a few hundred terms per entry (measured: 2e-15)."""


def _reference(*, bias: bool, dropout: float = 0.0, seed: int = 0) -> reference.GPT:
    """The independent module, with parameters moved away from nanoGPT's neutral start."""
    torch.manual_seed(seed)
    model = reference.GPT(reference.Config(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, bias=bias,
                                dropout=dropout)).double()  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _point(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 11, (3, 7), generator=g)  # (B, T)
    targets = torch.randint(0, 11, (3, 7), generator=g)
    targets[1, 2:5] = -1  # ignored positions
    return idx, targets


def _assert_rounding_close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    scale = float(expected.abs().max())
    error = float((actual - expected).abs().max())
    assert error <= FLOAT64_ROUNDING * max(scale, 1e-300), f"{name}: error {error:.3e}, scale {scale:.3e}"


@pytest.mark.parametrize("lean", [False, True], ids=["teaching", "training-step"])
@pytest.mark.parametrize(
    ("bias", "dropout", "training"),
    [(True, 0.0, True), (False, 0.0, True), (True, 0.2, True), (False, 0.2, True), (True, 0.2, False)],
    ids=["bias", "no-bias", "bias-dropout", "no-bias-dropout", "dropout-eval"],
)
def test_every_gradient_equals_autograd_on_an_independent_nanogpt(
    bias: bool, dropout: float, training: bool, lean: bool
) -> None:
    model = _reference(bias=bias, dropout=dropout).train(training)
    net = GPT.from_state_dict(model.state_dict(), n_head=2, dropout=dropout, seed=3).train(training)
    idx, targets = _point()
    cache = net.forward(idx, keep_intermediates=not lean)
    J = net.loss(cache, targets)
    grads = net.backward(cache, targets, intermediates=not lean, release_cache=lean).state_dict()
    with reference.use_masks(model, cache.noise):  # the torch module drops what refbp dropped
        logits, loss = model(idx, targets)
    assert loss is not None
    loss.backward()
    assert len(cache.noise) == (7 if training and dropout else 0)
    assert abs(float(J) - float(loss.detach())) <= FLOAT64_ROUNDING * abs(float(loss.detach()))
    if not lean:
        _assert_rounding_close(cache.y_hat, logits.detach(), "logits")
    named = dict(model.named_parameters())  # the tied weight once, as transformer.wte.weight
    assert set(grads) == set(model.state_dict())
    for name, p in named.items():
        assert p.grad is not None
        _assert_rounding_close(grads[name], p.grad, name)
    assert grads["lm_head.weight"] is grads["transformer.wte.weight"]


@pytest.mark.parametrize("lean", [False, True], ids=["teaching", "training-step"])
def test_one_row_at_a_time_gives_autograd_s_gradients(lean: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attention, GELU and the LayerNorms in chunks of one sequence or row (refbp.nn.chunks)."""
    monkeypatch.setattr(refbp.nn.chunks, "CHUNK_BYTES", 1)
    model = _reference(bias=True, dropout=0.2).train(True)
    net = GPT.from_state_dict(model.state_dict(), n_head=2, dropout=0.2, seed=5).train(True)
    idx, targets = _point()
    cache = net.forward(idx, keep_intermediates=not lean)
    grads = net.backward(cache, targets, intermediates=not lean, release_cache=lean).state_dict()
    with reference.use_masks(model, cache.noise):
        _, loss = model(idx, targets)
    assert loss is not None
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None
        _assert_rounding_close(grads[name], p.grad, name)


def test_state_dict_has_nanogpt_names_and_the_tie() -> None:
    model = _reference(bias=False)
    net = GPT.from_state_dict(model.state_dict(), n_head=2)
    sd = net.state_dict()
    assert list(sd) == list(model.state_dict())
    assert sd["lm_head.weight"] is sd["transformer.wte.weight"]
    for name, t in model.state_dict().items():
        assert torch.equal(sd[name], t)
        assert sd[name].data_ptr() != t.data_ptr()  # loading copies
    again = GPT.from_state_dict(sd, n_head=4)
    assert again.config == GPTConfig(11, 8, 2, 4, 8, bias=False)
    assert net.key_of("transformer.h.1.attn.c_attn.weight") == "W_qkv5.2"
    assert net.key_of("lm_head.weight") == "E1"


def test_a_training_step_keeps_no_attention_probabilities_and_no_branch_outputs() -> None:
    net = GPTSpec(5, 4, 2, 2, 4, batch=2, length=4).build().net
    cache = net.forward(torch.zeros(2, 4, dtype=torch.int64), keep_intermediates=False)
    for block_cache in (cache.saved[layer] for layer in (4, 5)):
        assert block_cache.saved[2].P is None  # the (T, T) probabilities are rebuilt in backward
        assert [j for j, a in enumerate(block_cache.a) if a is not None] == [1, 4, 5]  # GELU's output is rebuilt


def test_to_torch_computes_the_independent_module_s_loss() -> None:
    model = _reference(bias=True).eval()
    net = GPT.from_state_dict(model.state_dict(), n_head=2).eval()
    idx, targets = _point()
    mine = net.to_torch()
    assert list(mine.state_dict()) == list(model.state_dict())
    _, loss = model(idx, targets)
    _, loss_mine = mine(idx, targets)
    assert loss is not None and loss_mine is not None
    torch.testing.assert_close(loss_mine, loss, rtol=1e-13, atol=0.0)


def test_random_is_initialised_as_nanogpt() -> None:
    net = GPT.random(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, seed=0)
    sd = net.state_dict()
    assert bool((sd["transformer.h.0.ln_1.weight"] == 1).all()) and bool((sd["transformer.ln_f.bias"] == 0).all())
    assert float(sd["transformer.h.1.mlp.c_fc.weight"].std()) == pytest.approx(0.02, rel=0.1)
    assert float(sd["transformer.h.1.mlp.c_proj.weight"].std()) == pytest.approx(0.01, rel=0.1)  # 0.02/sqrt(2 n_layer)
    other = GPT.random(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, seed=0, dtype=torch.float32)
    torch.testing.assert_close(other.state_dict()["transformer.wte.weight"], sd["transformer.wte.weight"].float())


def test_inference_mode_manual_path_builds_no_graph() -> None:
    case = GPTSpec(5, 4, 1, 2, 4, dropout=0.25, batch=2, length=3, ignored=1).build()
    with torch.inference_mode():
        grads = case.net.backward(case.net.forward(case.X), case.y)
    assert not any(t.requires_grad for t in grads.as_dict().values())


# ---- property tests ----------------------------------------------------------------------------
@given(gpts())
def test_drawn_gpts_match_autograd(case: Case) -> None:
    refbp.check(case.net, case.X, case.y, references=("autograd",)).raise_if_failed()


@settings(max_examples=12)
@given(gpts(max_layers=1, max_batch=2))
def test_drawn_gpts_match_finite_differences(case: Case) -> None:
    result = refbp.check(case.net, case.X, case.y, references=("fd",))
    assert result.fd_mode == "full"
    # Finite differences contradict no entry. One they cannot confirm must be one too imprecise for
    # them: a LayerNorm over n_embd = 2 features is nearly a step (x_hat = +-1), steep and curved
    # where its two inputs nearly agree (0.0085 apart in the case the random profile found, 2.7
    # sqrt(eps)): there the check says "unverified", and autograd beside it verifies the entry.
    assert not any(row.verdict == "mismatch" for row in result.rows), result.table()
    assert all(row.n_unverified == row.n_imprecise for row in result.rows), result.table()
    if not result.passed:
        refbp.check(case.net, case.X, case.y).raise_if_failed()


def test_a_layernorm_of_two_nearly_equal_features_is_unverified_by_differences_never_failed() -> None:
    """The case the random profile found: ln_f's inputs at one position are 0.0085 apart, where a
    LayerNorm over 2 features turns from -1 to +1 within a few sqrt(eps). Central differences
    there cannot confirm 3 entries (one each of E1, a1, resid4) and say so; autograd verifies them."""
    spec = GPTSpec(5, 4, 1, 1, 2, batch=1, length=2, ignored=0, seed=709647)
    case = spec.build()
    by_fd = refbp.check(case.net, case.X, case.y, references=("fd",))
    unconfirmed = {row.name: row.n_imprecise for row in by_fd.rows if row.n_unverified}
    assert unconfirmed == {"E1": 1, "a1": 1, "resid4": 1}, by_fd.table()
    assert not by_fd.passed and not any(row.verdict == "mismatch" for row in by_fd.rows)
    refbp.check(case.net, case.X, case.y).raise_if_failed()


def test_large_tensors_are_checked_by_directional_differences() -> None:
    case = GPTSpec(7, 6, 1, 2, 8, batch=2, length=6, ignored=2, seed=4).build()
    result = refbp.check(case.net, case.X, case.y, fd_mode="directional")
    result.raise_if_failed()
    assert all(row.directions == 8 for row in result.rows if row.reference == "fd-directional")


@given(gpt_specs())
def test_spec_json_round_trip(spec: GPTSpec) -> None:
    data = json.loads(spec.to_json())
    assert data["model"] == "gpt" and GPTSpec.from_dict(data) == spec
    assert spec.to_json() in spec.command()


# ---- errors at the boundary ----------------------------------------------------------------------
def _state_dict() -> dict[str, torch.Tensor]:
    return GPT.random(vocab_size=5, block_size=4, n_layer=2, n_head=2, n_embd=4).state_dict()


def test_loader_accepts_compiled_names_and_mask_buffers() -> None:
    sd = {"_orig_mod." + name: t for name, t in _state_dict().items()}
    sd["_orig_mod.transformer.h.0.attn.bias"] = torch.ones(4, 4).tril().view(1, 1, 4, 4)
    assert GPT.from_state_dict(sd, n_head=2).config.n_layer == 2
    sd = _state_dict()
    del sd["lm_head.weight"]  # implied by the tie
    assert GPT.from_state_dict(sd, n_head=1).config.bias


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda sd: sd.pop("transformer.h.1.ln_2.weight"), r"missing \['transformer.h.1.ln_2.weight'\]"),
        (lambda sd: sd.update({"transformer.h.0.mlp.extra": torch.zeros(2)}), r"unexpected \['transformer.h.0.mlp"),
        (lambda sd: sd.update({"transformer.h.0.attn.c_attn.weight": torch.zeros(12, 3, dtype=torch.float64)}),
         r"'transformer.h.0.attn.c_attn.weight' has shape \(12, 3\).*expected shape \(12, 4\)"),
        (lambda sd: sd.pop("transformer.h.1.attn.c_proj.bias"), r"has 12 of the 13 biases .*bias=True\) or none"),
        (lambda sd: sd.update({"transformer.ln_f.weight": torch.ones(4, dtype=torch.float32)}),
         r"'transformer.ln_f.weight' has .*float32.*transformer.wte.weight's dtype torch.float64"),
        (lambda sd: sd.pop("transformer.wpe.weight"), r"state_dict has no 'transformer.wpe.weight'"),
    ],
    ids=["missing", "extra", "misshapen", "some-biases", "mixed-dtype", "no-wpe"],
)  # fmt: skip
def test_loader_names_what_is_wrong(change, message: str) -> None:  # type: ignore[no-untyped-def]
    sd = _state_dict()
    change(sd)
    with pytest.raises(ValueError, match=message):
        GPT.from_state_dict(sd, n_head=2)


def test_bad_sizes_and_points_are_refused() -> None:
    with pytest.raises(ValueError, match=r"n_head=3 must be an int >= 1 dividing n_embd = 4"):
        GPT.from_state_dict(_state_dict(), n_head=3)
    with pytest.raises(ValueError, match=r"n_head=3 must divide n_embd=4"):
        GPTConfig(5, 4, 1, 3, 4)
    net = GPT.from_state_dict(_state_dict(), n_head=2)
    with pytest.raises(ValueError, match=r"idx has T = 5 positions; this GPT's block_size is 4"):
        net.forward(torch.zeros(1, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"idx must be an int64 \(B, T\) tensor"):
        net.forward(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"index 7 is not a row; expected 0 <= idx < 5"):
        net.forward(torch.full((1, 2), 7, dtype=torch.int64))
    cache = net.forward(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"targets must have shape \(2, 3\)"):
        net.loss(cache, torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"every entry of targets is -1 \(ignored\)"):
        net.backward(cache, torch.full((2, 3), -1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"unknown keys \['width'\] in the GPT spec"):
        GPTSpec.from_dict({"vocab_size": 2, "block_size": 2, "n_layer": 1, "n_head": 1, "n_embd": 2, "width": 3})


def test_the_blocks_are_nanogpt_s_in_order() -> None:
    net = GPT.random(vocab_size=5, block_size=4, n_layer=3, n_head=2, n_embd=4, bias=False, dropout=0.1)
    blocks = [layer for layer in net.layers if isinstance(layer, Block)]
    assert len(blocks) == 3 and net.L == 3 + 3 + 2
    assert net.describe() == "GPT(vocab 5, block 4, 3 layers, 2 heads, n_embd 4, no bias, dropout 0.1)"


def test_from_state_dict_names_a_string_dtype_and_a_key_that_is_not_a_str() -> None:
    sd = _state_dict()
    with pytest.raises(TypeError, match=r"dtype='float32' \(str\) must be a floating torch.dtype"):
        GPT.from_state_dict(sd, n_head=2, dtype="float32")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"dtype=torch.int64 \(dtype\) must be a floating torch.dtype"):
        GPT.from_state_dict(sd, n_head=2, dtype=torch.int64)
    with pytest.raises(TypeError, match=r"state_dict has the key 3 \(int\); expected str keys"):
        GPT.from_state_dict({**sd, 3: sd["transformer.wte.weight"]}, n_head=2)  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"state_dict has the key \('transformer', 'wte'\) \(tuple\)"):
        GPT.from_state_dict({("transformer", "wte"): sd["transformer.wte.weight"]}, n_head=2)  # type: ignore[dict-item]
    assert GPT.from_state_dict(sd, n_head=2, dtype=torch.float32).dtype == torch.float32  # a real dtype works


@pytest.mark.parametrize(
    ("sizes", "needs"),
    [
        ({"vocab_size": 1 << 24, "n_embd": 1 << 22, "n_layer": 1, "n_head": 1}, "vocab_size=16777216, n_embd=4194304"),
        ({"vocab_size": 5, "n_embd": 1 << 12, "n_layer": 1 << 24, "n_head": 1}, "n_layer=16777216"),
    ],
    ids=["vocab-x-n_embd", "n_layer"],
)
def test_a_gpt_too_large_for_memory_is_refused_before_it_is_drawn(sizes: dict[str, Any], needs: str) -> None:
    with pytest.raises(ValueError, match=r"GPT.random \(.*needs .* GiB of memory, but only") as raised:
        GPT.random(block_size=4, **sizes)
    assert needs in str(raised.value) and "parameters" in str(raised.value)
    with pytest.raises(ValueError, match=r"needs .* GiB of memory") as raised:
        GPTSpec(block_size=4, **sizes)  # what refbp check --case builds from
    assert needs in str(raised.value)


def test_a_forward_pass_whose_attention_scores_cannot_fit_is_refused_naming_b_heads_and_t() -> None:
    net = GPT.random(vocab_size=5, block_size=1 << 17, n_layer=1, n_head=16, n_embd=16)
    idx = torch.zeros(64, 1 << 17, dtype=torch.int64)  # 64 x 16 x 2**17 x 2**17 attention scores
    with pytest.raises(ValueError, match=r"forward and backward pass .*B=64 x T=131072 tokens with n_head=16"):
        net.forward(idx)
    assert net.forward(idx[:1, :3]).y_hat.shape == (1, 3, 5)  # a pass that fits still runs


def test_the_command_line_refuses_a_gpt_spec_too_large_for_memory_with_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = {"model": "gpt", "vocab_size": 5, "block_size": 1 << 16, "n_layer": 1, "n_head": 16, "n_embd": 16,
            "batch": 64, "length": 1 << 16}  # fmt: skip
    assert main(["check", "--case", json.dumps(spec)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --case: ") and "GiB of memory" in err and len(err.strip().splitlines()) == 1
