"""Hypothesis strategies for networks and points to check them at: the ones refbp's own tests
use, exported so that you can property-test your own backprop the same way.

    from hypothesis import given
    from refbp.strategies import cases

    @given(cases(losses=["mse"]))
    def test_my_backprop(case):
        refbp.check(case.net, case.X, case.y, grads=my_backprop(case)).raise_if_failed()

Shapes, activations, loss, dtype and an integer seed are drawn by hypothesis; the numbers are
drawn from the seed. A failure therefore shrinks to the shallowest, narrowest network with
the smallest batch that still shows it.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import assume
from hypothesis import strategies as st

from .nn.activations import ACTIVATIONS
from .nn.losses import LOSSES, get_loss
from .verify.cases import KINK_MARGIN, Case, CaseSpec, kink_distance

__all__ = ["cases", "specs"]


def _validate(name: str, given: Sequence[str], known: Sequence[str]) -> list[str]:
    values = list(given)
    bad = [v for v in values if v not in known]
    if bad or not values:
        raise ValueError(f"{name}={values!r}: expected a non-empty list drawn from {sorted(known)}")
    return values


@st.composite
def specs(
    draw: st.DrawFn,
    *,
    max_depth: int = 5,
    max_width: int = 16,
    max_batch: int = 8,
    activations: Sequence[str] = tuple(ACTIVATIONS),
    losses: Sequence[str] = tuple(LOSSES),
    dtypes: Sequence[str] = ("float64", "float32"),
    device: str = "cpu",
    weight_decay: bool = True,
) -> CaseSpec:
    """A CaseSpec: depth 1..max_depth, widths 1..max_width, batch 1..max_batch, an activation
    per layer, a loss (the output activation made to fit it), a dtype and a seed."""
    if not (max_depth >= 1 and max_width >= 1 and max_batch >= 1):
        raise ValueError(f"max_depth={max_depth}, max_width={max_width}, max_batch={max_batch}: all must be >= 1")
    activation_names = _validate("activations", activations, list(ACTIVATIONS))
    loss_names = _validate("losses", losses, list(LOSSES))
    dtype_names = _validate("dtypes", dtypes, ["float64", "float32", "float16", "bfloat16"])

    loss = draw(st.sampled_from(loss_names))
    depth = draw(st.integers(1, max_depth))
    min_out = 2 if get_loss(loss).targets == "classes" else 1
    dims = [draw(st.integers(1, max_width)) for _ in range(depth)]
    dims.append(draw(st.integers(min_out, max(min_out, max_width))))
    acts = [draw(st.sampled_from(activation_names)) for _ in range(depth)]
    required = get_loss(loss).output_activation
    if required is not None:
        acts[-1] = required
    return CaseSpec(
        dims=tuple(dims),
        activations=tuple(acts),
        loss=loss,
        seed=draw(st.integers(0, 2**31 - 1)),
        dtype=draw(st.sampled_from(dtype_names)),
        device=device,
        batch=draw(st.integers(1, max_batch)),
        weight_decay=draw(st.sampled_from([0.0, 0.1])) if weight_decay else 0.0,
    )


@st.composite
def cases(draw: st.DrawFn, *, away_from_kinks: bool = True, **spec_options: object) -> Case:
    """A built Case (network, X, y) from ``specs(**spec_options)``.

    With ``away_from_kinks`` (the default) cases with a relu/leaky_relu pre-activation within
    KINK_MARGIN of 0 are rejected (``assume``), so finite differences never straddle a kink;
    about 1 draw in 20 is rejected at the default sizes."""
    spec = draw(specs(**spec_options))  # type: ignore[arg-type]
    case = spec.build()
    if away_from_kinks:
        assume(kink_distance(case) > KINK_MARGIN)
    return case
