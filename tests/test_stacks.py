"""Every layer kind, in random stacks (refbp.strategies.stacks), passes refbp.check against both
torch.autograd and full finite differences, in float64 and float32, in training and eval mode:
every gradient ``net.backward(...).as_dict()`` holds, each verified entry by entry
("passed", which means verified, not merely "not contradicted")."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import torch
from hypothesis import find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

import refbp
from refbp.apps.report import _layer_table as layer_table
from refbp.apps.sweep import components, sweep_specs
from refbp.nn.activations import ACTIVATIONS
from refbp.strategies import STACK_KINDS, stack_specs, stacks
from refbp.verify.cases import Case
from refbp.verify.reference import autograd_gradients
from refbp.verify.stacks import StackSpec

EXAMPLES = max(3, settings().max_examples // 20)
"""Per (kind, dtype, mode): 32 such properties share the profile's budget, and each example
runs autograd plus a full finite-difference sweep (three evaluations per entry)."""

INCLUDE = {kind: [kind] for kind in STACK_KINDS}
"""What each property asks the strategy for: its kind, at least once."""


def kinds_in(layers: Any) -> set[str]:
    """The kinds of a StackSpec's layers, nested ones included, activations as "activation"."""
    found: set[str] = set()
    for layer in layers:
        kind = layer[0]
        found.add("activation" if kind in ACTIVATIONS else kind)
        if kind == "residual":
            found |= kinds_in(layer[1])
    return found


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", STACK_KINDS)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_every_gradient_of_every_layer_kind_is_verified_by_autograd_and_full_finite_differences(
    kind: str, dtype: str, training: bool, data: st.DataObject
) -> None:
    case: Case = data.draw(stacks(include=INCLUDE[kind], dtypes=[dtype], training=training), label="case")
    assert kind in kinds_in(case.spec.layers)
    net = case.net
    assert net.training == training and str(net.dtype) == f"torch.{dtype}"
    cache = net.forward(case.X, update_stats=False)  # the dropout masks the check will use
    names = list(net.backward(cache, case.y).as_dict())

    result = refbp.check(net, case.X, case.y, fd_mode="full", noise=cache.noise)

    assert result.fd_mode == "full"
    assert [t.name for t in result.tensors] == names, "every gradient, and only those, was judged"
    for verdict in result.tensors:
        assert verdict.verdict == "passed", f"{case.spec.command()}\n{result.failure_message()}"
        assert verdict.n_unverified == 0 and set(verdict.references) == {"autograd", "fd-full"}
    assert result.passed


# ---- points where a careless harness misjudges a right gradient ------------------------------------
ZERO_BY_CANCELLATION = (
    '{"batch": 2, "device": "cpu", "dtype": "float32", "input": {"length": 2, "vocab": 3}, '
    '"layers": [["embedding", 1], ["identity"], ["flatten"], ["batchnorm", {}], ["linear", 1]], '
    '"loss": "half_sse", "seed": 508, "training": true, "weight_decay": 0.0}'
)
"""Both rows are the tokens [0, 0]: dJ/dE[0] sums dJ/dx of a training BatchNorm over the whole
batch, which is 0 exactly; float32 terms of size ~6 leave a residue of one rounding."""

CHAINED_BATCHNORMS = (
    '{"batch": 2, "device": "cpu", "dtype": "float64", "input": {"length": 3, "vocab": 3}, '
    '"layers": [["embedding", 3], ["flatten"], ["batchnorm", {"affine": false}], '
    '["residual", [["silu"], ["silu"]]], ["batchnorm", {"affine": false}], ["batchnorm", {"affine": false}], '
    '["linear", 2]], "loss": "cross_entropy", "seed": 2618, "training": true, "weight_decay": 0.0}'
)
"""Both rows hold token 1 at position 3: features 7-9 are constant over the batch, and three
training BatchNorms amplify a perturbation of them by 316^3 ~ 3e7."""

BATCHNORM_THEN_LAYERNORMS = (
    '{"batch": 2, "device": "cpu", "dtype": "float64", "input": 3, "layers": [["identity"], '
    '["batchnorm", {"affine": false}], ["layernorm", {"bias": false}], ["layernorm", {}], ["linear", 2]], '
    '"loss": "cross_entropy", "seed": 3, "training": true, "weight_decay": 0.0}'
)
"""A BatchNorm of two rows gives each feature the values +-(1 - O(eps)): a row whose first two
entries share a sign is constant up to 1e-5, and two LayerNorms amplify that by 316^2."""


def test_float32_check_passes_a_right_gradient_that_is_zero_by_cancellation() -> None:
    """The conditioning allowance (rounding probes) covers a float32 sum of large terms that
    cancel: the tolerance does not collapse to atol where the reference is 0."""
    case = StackSpec.from_dict(json.loads(ZERO_BY_CANCELLATION)).build()
    net = case.net
    cache = net.forward(case.X, update_stats=False)
    grads = net.backward(cache, case.y).as_dict()
    _, reference = autograd_gradients(net, case.X, case.y, dtype=torch.float64, noise=cache.noise)
    assert float(reference["E1"].abs().max()) == 0.0  # zero by cancellation
    terms = float(grads["a1"].abs().max())  # dJ/dE[0] sums these
    assert 0.0 < float(grads["E1"].abs().max()) <= 4 * terms * torch.finfo(torch.float32).eps  # float32 rounding
    refbp.check(net, case.X, case.y, noise=cache.noise).raise_if_failed()

    wrong = dict(grads, E1=grads["E1"] + 1e-2 * terms)  # a real error of that size is still seen
    result = refbp.check(net, case.X, case.y, grads=wrong, noise=cache.noise)
    assert [t.name for t in result.tensors if t.verdict == "mismatch"] == ["E1"]


@pytest.mark.parametrize("spec", [CHAINED_BATCHNORMS, BATCHNORM_THEN_LAYERNORMS], ids=["batchnorms", "layernorms"])
def test_fd_leaves_unverified_what_chained_normalisations_of_a_constant_group_make_it_unable_to_resolve(
    spec: str,
) -> None:
    """Where chained normalisations see a group constant up to rounding, the forward pass cancels
    and J's own rounding, over a step h, swamps the difference: finite differences must say
    "cannot tell" (unverified), not contradict a gradient that autograd confirms."""
    case = StackSpec.from_dict(json.loads(spec)).build()
    net = case.net
    cache = net.forward(case.X, update_stats=False)
    grads = net.backward(cache, case.y).as_dict()
    _, reference = autograd_gradients(net, case.X, case.y, dtype=torch.float64, noise=cache.noise)
    for name, r in reference.items():  # refbp equals autograd to float64 rounding everywhere
        torch.testing.assert_close(grads[name], r, rtol=1e-9, atol=1e-9 * float(r.abs().max()))
    result = refbp.check(net, case.X, case.y, fd_mode="full")
    result.raise_if_failed()
    fd_rows = [row for row in result.rows if row.reference == "fd-full"]
    assert not any(row.verdict == "mismatch" for row in fd_rows)
    unresolved = [row.name for row in fd_rows if row.n_unverified]
    assert unresolved  # the ill-resolved entries are said to be so

    name = max(unresolved, key=lambda n: float(reference[n].abs().max()))  # not one that is 0
    wrong = dict(grads, **{name: grads[name] * 1.01})  # autograd still sees a 1% error there
    caught = refbp.check(net, case.X, case.y, grads=wrong, fd_mode="full")
    assert [t.name for t in caught.tensors if t.verdict == "mismatch"] == [name]


def test_stack_specs_include_flatten_draws_a_flatten() -> None:
    """The docstring's promise, 'with every kind in include at least once', for flatten, which
    the strategy otherwise adds only after an Embedding."""
    for kinds in (STACK_KINDS, [k for k in STACK_KINDS if k != "embedding"]):
        try:
            missing = find(
                stack_specs(kinds=kinds, include=["flatten"]),
                lambda spec: "flatten" not in kinds_in(spec.layers),
                settings=settings(database=None, max_examples=max(50, settings().max_examples), derandomize=True),
            )
        except NoSuchExample:  # every draw had one
            continue
        raise AssertionError(f"include=['flatten'] drew {missing}")


# ---- the curriculum's kinds: images, sequences, recurrent layers ---------------------------------
CURRICULUM_SPECS = [
    {"input": {"shape": [2, 5, 4]}, "layers": [
        ["conv2d", 4, {"kernel": [3, 2], "stride": [2, 1], "padding": [1, 0], "dilation": [1, 2], "groups": 2}],
        ["relu"], ["maxpool", {"kernel": 2, "stride": 1}], ["batchnorm2d"], ["groupnorm", 2, {"affine": False}],
        ["softmax", 1], ["flatten"], ["linear", 3]], "loss": "cross_entropy", "batch": 2},
    {"input": {"shape": [1, 4, 4], "integers": True}, "layers": [
        ["maxpool", {"kernel": 2, "stride": 1}], ["avgpool", {"kernel": 2, "padding": 1, "count_include_pad": False}],
        ["adaptive_avgpool", [2, None]], ["flatten"], ["linear", 2]], "loss": "mse", "batch": 2, "training": False},
    {"input": {"vocab": 5, "length": 3}, "layers": [
        ["embedding", 3], ["lstm", 2, {"layers": 2, "initial_state": True}], ["linear", 5]], "loss": "cross_entropy"},
    {"input": {"shape": [3, 2]}, "layers": [
        ["gru", 3, {"batch_first": False, "initial_state": True}], ["rnn", 2, {"nonlinearity": "relu", "bias": False}],
        ["logsoftmax", -1], ["flatten"], ["linear", 2]], "loss": "mse", "batch": 3},
    {"input": {"shape": [2, 6]}, "layers": [
        ["conv1d", 2, {"kernel": 3, "padding": "same", "groups": 2}], ["tanh"], ["flatten"], ["linear", 2]],
     "loss": "half_sse"},
]  # fmt: skip
"""One stack of each curriculum kind at least, on images, integer images, tokens and sequences."""


@pytest.mark.parametrize("data", CURRICULUM_SPECS, ids=["cnn", "ties", "char-lstm", "gru-rnn", "conv1d"])
def test_curriculum_stacks_round_trip_and_are_verified_in_both_dtypes(data: dict[str, Any]) -> None:
    spec = StackSpec.from_dict(data)
    assert StackSpec.from_dict(json.loads(spec.to_json())) == spec and spec.command().startswith("refbp check")
    for dtype in ("float64", "float32"):
        case = StackSpec.from_dict({**data, "dtype": dtype}).build()
        assert case.X.shape[1:] == (tuple(data["input"]["shape"]) if "shape" in data["input"] else (3,))
        refbp.check(case.net, case.X, case.y).raise_if_failed()
    if data["input"].get("integers"):
        X = spec.build().X
        assert torch.equal(X, X.round())  # integers on purpose: ties


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"input": 4, "layers": [["maxpool"], ["linear", 2]]}, "needs input (N, C, H, W)"),
        ({"input": {"shape": [2, 3, 3]}, "layers": [["conv2d", 3, {"groups": 2}]]}, "groups=2 must divide"),
        ({"input": {"shape": [2, 3, 3]}, "layers": [["conv2d", 3, {"kernel": 0}]]}, "option 'kernel'"),
        ({"input": {"shape": [2, 3, 3]}, "layers": [["conv2d", 3, {"padding": "full"}]]}, "option 'padding'"),
        ({"input": {"shape": [2, 2, 2]}, "layers": [["conv2d", 1, {"kernel": 5}]]}, "smaller than the dilated kernel"),
        ({"input": {"shape": [2, 3, 3]}, "layers": [["lstm", 2]]}, "lstm needs (N, T, d) inputs"),
        ({"input": {"shape": [3, 2]}, "layers": [["rnn", 2, {"nonlinearity": "sigmoid"}]]}, "'nonlinearity'"),
        ({"input": {"shape": [3, 2]}, "layers": [["gru", 2, {"hidden": 3}]]}, "gru has no option 'hidden'"),
        ({"input": {"shape": []}, "layers": [["linear", 2]]}, "input.shape"),
        ({"input": {"shape": [2], "pixels": 1}, "layers": [["linear", 2]]}, "unknown keys ['pixels']"),
    ],
)
def test_a_curriculum_layer_that_cannot_read_its_input_is_refused_naming_it(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        StackSpec.from_dict({"loss": "mse", **data})


def test_the_report_sweep_draws_every_curriculum_layer_and_its_coverage_table_lists_them() -> None:
    specs = [spec for _, spec in sweep_specs(200, seed=0) if isinstance(spec, StackSpec)]
    drawn = {c for spec in specs for c in components(spec)}
    wanted = {"conv1d", "conv2d", "maxpool", "avgpool", "adaptive_avgpool", "batchnorm2d (train)",
              "batchnorm2d (eval)", "groupnorm", "softmax", "logsoftmax", "rnn", "lstm", "gru"}  # fmt: skip
    assert wanted <= drawn, wanted - drawn
    assert any(spec.integers for spec in specs)  # max-pool ties, on purpose
    shapes = {len(spec.shape) for spec in specs}
    assert {0, 2, 3} <= shapes  # rows or tokens, sequences, images
    coverage = [{"kind": "stack", "component": c, "loss": "mse", "dtype": "float64", "device": "cpu", "cases": 1,
                 "passed": 1} for c in sorted(wanted)]  # fmt: skip
    table = layer_table(coverage)
    assert all(f"| {name} " in table for name in wanted)
