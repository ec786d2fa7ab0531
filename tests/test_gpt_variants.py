"""minGPT's variants of refbp.models.GPT: an untied LM head detected from the state dict, the tanh
GELU, separate embedding/attention/residual dropout rates, and ``to_torch()`` building exactly
the model refbp computes. Checked against autograd on an independent minGPT-style module
(tests/mingpt_reference.py) and on ``to_torch()``'s module, to float64 rounding."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from torch import nn

import refbp
from refbp.models import GPT, GPTSpec, TorchGPT
from refbp.models.gpt_cases import gpt_specs, gpts
from refbp.models.gpt_memory import gpt_parameter_count
from refbp.nn.transformer import TorchBlock
from refbp.verify.cases import Case
from tests import mingpt_reference as mingpt
from tests import nanogpt_reference as nanogpt

FLOAT64_ROUNDING = 1e-12
"""Greatest |refbp - autograd| allowed, relative to the largest |autograd| entry, in float64: both
round at 1.1e-16 and these models sum a few hundred terms per entry (as tests/test_gpt.py)."""

RATES: dict[str, Any] = {"embd_pdrop": 0.1, "attn_pdrop": 0.2, "resid_pdrop": 0.3}
"""Three different rates, so that a rate in the wrong place changes a 1/(1 - p) scale somewhere."""


def _close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    scale = float(expected.abs().max())
    error = float((actual - expected).abs().max())
    assert error <= FLOAT64_ROUNDING * max(scale, 1e-300), f"{name}: error {error:.3e}, scale {scale:.3e}"


def _mingpt(*, dropout: bool) -> mingpt.GPT:
    """The independent minGPT, float64, its parameters moved away from their neutral start."""
    torch.manual_seed(0)
    rates = RATES if dropout else {}
    model = mingpt.GPT(mingpt.Config(vocab_size=7, block_size=5, n_layer=2, n_head=2, n_embd=4, **rates)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _point(vocab: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, vocab, (3, 4), generator=g)  # (B, T)
    targets = torch.randint(0, vocab, (3, 4), generator=g)
    targets[1, 1:3] = -1  # ignored positions
    return idx, targets


def _torch_dropouts(module: TorchGPT) -> dict[tuple[int, ...], nn.Module]:
    """to_torch()'s dropout modules by the path of refbp's layer that draws their masks."""
    out: dict[tuple[int, ...], nn.Module] = {(3,): module.transformer["drop"]}
    blocks = module.transformer["h"]
    assert isinstance(blocks, nn.ModuleList)
    for i, block in enumerate(blocks):
        assert isinstance(block, TorchBlock)
        out[(4 + i, 2)], out[(4 + i, 3)] = block.attn.attn_dropout, block.resid_dropout
        out[(4 + i, 8)] = block.mlp.dropout
    return out


# ---- minGPT's state dict, as it is -----------------------------------------------------------------
@pytest.mark.parametrize(("dropout", "training"), [(False, False), (True, True), (True, False)],
                         ids=["no-dropout", "three-rates-train", "three-rates-eval"])  # fmt: skip
def test_mingpt_state_dict_loads_and_every_gradient_equals_autograd(dropout: bool, training: bool) -> None:
    model = _mingpt(dropout=dropout).train(training)
    sd = model.state_dict()
    assert "transformer.h.0.attn.bias" in sd and "lm_head.weight" in sd  # the mask buffer, the head
    net = GPT.from_state_dict(sd, n_head=2, gelu="tanh", seed=4, **(RATES if dropout else {})).train(training)
    assert not net.config.tied  # detected: lm_head.weight is not wte
    idx, targets = _point()
    cache = net.forward(idx)
    J = net.loss(cache, targets)
    grads = net.backward(cache, targets).state_dict()
    assert len(cache.noise) == (1 + 3 * 2 if training else 0)
    with mingpt.masks_applied(mingpt.dropout_modules(model), cache.noise):  # the module drops what refbp dropped
        logits, loss = model(idx, targets)
    assert loss is not None
    loss.backward()
    _close(J, loss.detach(), "J")
    _close(cache.y_hat, logits.detach(), "logits")
    named = dict(model.named_parameters())
    assert set(grads) == set(named)  # every parameter, the head as its own
    for name, p in named.items():
        assert p.grad is not None
        _close(grads[name], p.grad, name)


def test_torch_s_own_masks_in_each_of_the_three_places_go_in_as_noise() -> None:
    """Each minGPT dropout draws torch's mask; refbp's forward(noise=...) with those masks by
    path computes the module's loss and gradients."""
    model = _mingpt(dropout=True).train(True)
    net = GPT.from_state_dict(model.state_dict(), n_head=2, gelu="tanh", **RATES).train(True)
    idx, targets = _point()
    torch.manual_seed(9)
    with mingpt.masks_recorded(mingpt.dropout_modules(model)) as masks:
        _, loss = model(idx, targets)
    assert loss is not None and len(masks) == 1 + 3 * 2
    loss.backward()
    cache = net.forward(idx, noise=masks)
    _close(net.loss(cache, targets), loss.detach(), "J")
    grads = net.backward(cache, targets).state_dict()
    for name, p in model.named_parameters():
        assert p.grad is not None
        _close(grads[name], p.grad, name)


def test_the_head_is_tied_or_not_as_the_state_dict_says() -> None:
    tied_sd = nanogpt.GPT(nanogpt.Config(5, 4, 1, 2, 4)).double().state_dict()  # one tensor twice
    assert GPT.from_state_dict(tied_sd, n_head=2).config.tied
    copied = {name: t.clone() for name, t in tied_sd.items()}  # equal values, two tensors
    assert GPT.from_state_dict(copied, n_head=2).config.tied
    del copied["lm_head.weight"]  # nanoGPT's convention: no head, the head is wte
    assert GPT.from_state_dict(copied, n_head=2).config.tied
    untied = {**tied_sd, "lm_head.weight": tied_sd["lm_head.weight"] + 1.0}
    net = GPT.from_state_dict(untied, n_head=2)
    assert not net.config.tied and net.key_of("lm_head.weight") == "W6"
    assert torch.equal(net.state_dict()["lm_head.weight"], untied["lm_head.weight"])


def test_a_stated_tie_the_state_dict_contradicts_is_refused() -> None:
    sd = GPT.random(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=4, tied=False).state_dict()
    with pytest.raises(ValueError, match=r"tied=True, but lm_head.weight .* differs from transformer.wte.weight"):
        GPT.from_state_dict(sd, n_head=2, tied=True)
    del sd["lm_head.weight"]
    with pytest.raises(ValueError, match=r"tied=False, but the state_dict has no 'lm_head.weight'"):
        GPT.from_state_dict(sd, n_head=2, tied=False)
    with pytest.raises(TypeError, match=r"tied='no' must be True, False or None"):
        GPT.from_state_dict(sd, n_head=2, tied="no")  # type: ignore[arg-type]


def test_an_untied_head_equal_to_wte_splits_the_tied_gradient_between_its_two_uses() -> None:
    """dJ/dE of the tied GPT = dJ/dE + dJ/dW_head of the same values loaded untied."""
    case = GPTSpec(6, 4, 1, 2, 4, batch=2, length=4, seed=3).build()
    sd = case.net.state_dict()
    untied = GPT.from_state_dict(sd, n_head=2, tied=False)
    assert not untied.config.tied
    tied_grads = case.net.backward(case.net.forward(case.X), case.y).state_dict()
    grads = untied.backward(untied.forward(case.X), case.y).state_dict()
    assert not torch.equal(grads["lm_head.weight"], grads["transformer.wte.weight"])
    _close(grads["transformer.wte.weight"] + grads["lm_head.weight"], tied_grads["transformer.wte.weight"], "E")


# ---- to_torch(): exactly the model refbp computes --------------------------------------------------
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_to_torch_keeps_the_untied_head_the_tanh_gelu_and_each_dropout_rate(training: bool) -> None:
    spec = GPTSpec(7, 5, 2, 2, 4, training=training, batch=3, length=4, ignored=2, seed=5, tied=False, gelu="tanh",
                   **RATES)  # fmt: skip
    case = spec.build()
    net = case.net
    module = net.to_torch()
    assert module.lm_head.weight is not module.transformer["wte"].weight
    cache = net.forward(case.X)
    J = net.loss(cache, case.y)
    grads = net.backward(cache, case.y).state_dict()
    with mingpt.masks_applied(_torch_dropouts(module), cache.noise):  # each module scales by its own p
        logits, loss = module(case.X, case.y)
    assert loss is not None
    loss.backward()
    _close(J, loss.detach(), "J")
    _close(cache.y_hat, logits.detach(), "logits")
    for name, p in module.named_parameters():
        assert p.grad is not None
        _close(grads[name], p.grad, name)


def test_to_torch_of_a_tied_gpt_shares_one_parameter() -> None:
    module = GPT.random(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=4).to_torch()
    assert module.lm_head.weight is module.transformer["wte"].weight


# ---- the harness draws them ------------------------------------------------------------------------
@settings(max_examples=max(1, settings().max_examples // 6))  # a sixth of the profile's: 10 in ci
@given(gpts(tied=False, gelu=None, separate_dropouts=None, max_layers=1, max_batch=2, max_block_size=3))
def test_drawn_untied_variants_match_autograd(case: Case) -> None:
    refbp.check(case.net, case.X, case.y, references=("autograd",)).raise_if_failed()


def test_a_variant_matches_finite_differences() -> None:
    spec = GPTSpec(3, 2, 1, 2, 4, batch=1, length=2, seed=2, tied=False, gelu="tanh", embd_pdrop=0.25,
                   attn_pdrop=0.0, resid_pdrop=0.5)  # fmt: skip
    case = spec.build()
    result = refbp.check(case.net, case.X, case.y, references=("fd",))
    result.raise_if_failed()
    assert result.fd_mode == "full"


@given(gpt_specs(tied=None, gelu=None, separate_dropouts=None))
def test_variant_spec_json_round_trip(spec: GPTSpec) -> None:
    data = json.loads(spec.to_json())
    assert GPTSpec.from_dict(data) == spec
    assert ("tied" in data) == (not spec.tied) and ("gelu" in data) == (spec.gelu == "tanh")


def test_a_nanogpt_spec_s_json_has_no_variant_keys_and_variants_show_in_components() -> None:
    plain = GPTSpec(5, 4, 1, 2, 4, dropout=0.25)
    assert set(plain.to_dict()).isdisjoint({"tied", "gelu", "embd_pdrop", "attn_pdrop", "resid_pdrop"})
    variant = GPTSpec(5, 4, 1, 2, 4, tied=False, gelu="tanh", attn_pdrop=0.25)
    assert {"gelu_tanh", "untied head", "dropout (train)"} <= set(variant.components())
    assert "gelu" not in variant.components()
    assert "untied head, tanh GELU, dropout embd 0 attn 0.25 resid 0" in variant.describe()


def test_the_parameter_count_is_the_model_s_tied_or_untied() -> None:
    for tied in (True, False):
        net = GPT.random(vocab_size=9, block_size=4, n_layer=2, n_head=2, n_embd=4, bias=False, tied=tied)
        count = gpt_parameter_count(vocab_size=9, block_size=4, n_layer=2, n_embd=4, bias=False, tied=tied)
        assert count == sum(t.numel() for t in net.parameters().values())


def test_bad_variants_are_refused_naming_the_argument() -> None:
    sizes: dict[str, Any] = {"vocab_size": 5, "block_size": 4, "n_layer": 1, "n_head": 2, "n_embd": 4}
    with pytest.raises(ValueError, match=r"gelu='fast'; expected 'exact' .* or 'tanh'"):
        GPT.random(**sizes, gelu="fast")
    with pytest.raises(ValueError, match=r"attn_pdrop=1.0 must be a probability in \[0, 1\)"):
        GPT.random(**sizes, attn_pdrop=1.0)
    with pytest.raises(TypeError, match=r"tied='yes' must be True or False"):
        GPTSpec(**sizes, tied="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown keys \['head'\] in the GPT spec"):
        GPTSpec.from_dict({**sizes, "head": "untied"})


def test_the_report_sweep_draws_mingpt_variants_and_they_verify() -> None:
    import random

    from refbp.apps.sweep import random_gpt
    from refbp.verify.sweep import check_case

    rng = random.Random(0)
    specs = [random_gpt(rng) for _ in range(40)]
    variants = [s for s in specs if not s.tied or s.gelu == "tanh"]
    assert 4 <= len(variants) <= 20  # one in four
    assert {s.gelu for s in variants} == {"exact", "tanh"} and any(not s.tied for s in variants)
    for spec in variants[:3]:
        result = check_case(spec, "full")
        assert result.passed, result.failure_message()
