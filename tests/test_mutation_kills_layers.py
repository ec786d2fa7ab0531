"""Properties of the layer modules (normalisations, attention, the transformer block) that the
broad property tests leave loose: found by mutation testing (scripts/mutation.py), each checked
against torch itself or against the error messages users read. Apart from tests/test_mutation_kills.py
(the MLP's modules); both are in setup.cfg's mutmut test selection, and mutmut re-collects the whole
selection (and forgets every result) when that list changes, so new layer kills go here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refbp.nn.layernorm import LayerNorm


# ---- LayerNorm ------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [2, 3, 5])
def test_layernorm_row_scale_is_what_torch_divides_each_row_by(d: int) -> None:
    # The finite-difference verifier's scale of a LayerNorm row is sqrt(biased variance + eps): x - mean,
    # divided by it, is torch's layer_norm, row by row (so the scale follows the last dimension).
    gen = torch.Generator().manual_seed(d)
    x = torch.randn(3, 4, d, dtype=torch.float64, generator=gen) * torch.tensor([0.5, 2.0, 7.0, 0.1]).view(1, 4, 1)
    layer = LayerNorm(d=d, eps=0.1)
    scale = layer.pieces.scale
    assert scale is not None
    s = scale(x)
    assert s.shape == x.shape
    torch.testing.assert_close((x - x.mean(-1, keepdim=True)) / s, F.layer_norm(x, (d,), eps=0.1))


def test_single_feature_layernorm_row_scale_is_infinite_as_torch_output_is_constant() -> None:
    # One feature: torch normalises every value to 0, so nothing curves; the scale is infinite.
    x = torch.linspace(-5, 5, 11, dtype=torch.float64).view(11, 1)
    assert torch.equal(F.layer_norm(x, (1,)), torch.zeros_like(x))
    scale = LayerNorm(d=1).pieces.scale
    assert scale is not None
    assert torch.isinf(scale(x)).all()
