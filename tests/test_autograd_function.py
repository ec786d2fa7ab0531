"""check_autograd_function (issue 19): a custom backward judged in its own dtype against float64
torch: correct Functions pass in float32, float16 and bfloat16; every catalogued mistake is
contradicted where it exceeds the dtype's resolution and unverified (never passed) where not;
linearity, zero grad_output, jvp and run-to-run spread each have their own rows and messages."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.autograd import Function

import refbp
from refbp.examples import custom_function
from refbp.examples.custom_function import FusedCrossEntropy
from refbp.verify.function_bugs import FUNCTION_BUGS
from refbp.verify.function_sweep import DTYPES, false_positive_sweep
from refbp.verify.hand_functions import CASES, Linear, Sigmoid
from refbp.verify.observers import add_observer

from .conftest import requires_cuda

SWEEP_EXAMPLES = max(7, settings().max_examples // 8)
"""A check costs ~0.1 s: an eighth of the profile's examples (7 under ci, 375 under thorough)."""


def _point(case: str, dtype: torch.dtype, seed: int = 0) -> tuple[Tensor, ...]:
    return CASES[case].inputs(dtype, torch.Generator().manual_seed(1000 + seed))  # not the check's stream


@settings(max_examples=SWEEP_EXAMPLES)
@given(case=st.sampled_from(sorted(CASES)), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 10_000))
def test_correct_functions_pass_in_every_kernel_dtype(case: str, dtype: torch.dtype, seed: int) -> None:
    result = refbp.check_autograd_function(CASES[case].fn, *_point(case, dtype, seed), reference=CASES[case].reference,
                                           seed=seed)  # fmt: skip
    assert result.passed, result.failure_message()
    assert result.dtype == str(dtype).removeprefix("torch.")


def test_false_positive_sweep_flags_no_correct_function() -> None:
    sweep = false_positive_sweep(len(CASES), seed=3)
    assert sweep.checked == len(CASES) and sweep.flagged == []
    assert 0.0 < sweep.worst_margin < 1.0


@pytest.mark.parametrize("name", sorted(FUNCTION_BUGS))
def test_each_catalogued_bug_is_contradicted_where_the_dtype_resolves_it(name: str) -> None:
    bug = FUNCTION_BUGS[name]
    for dtype in DTYPES:
        inputs = bug.point(dtype, torch.Generator().manual_seed(7))
        result = refbp.check_autograd_function(bug.fn, *inputs, reference=CASES[bug.case].reference, seed=2)
        verdicts = {t.name: t.verdict for t in result.tensors}
        assert not result.passed, f"{name} passed in {dtype}"
        if bug.subtle and dtype != torch.float32:  # below float16's and bfloat16's resolution
            assert "mismatch" not in verdicts.values() and "unverified" in verdicts.values(), verdicts
            assert f"below {str(dtype).removeprefix('torch.')}'s resolution" in result.failure_message()
        else:
            assert "mismatch" in verdicts.values(), f"{name} in {dtype}: {verdicts}"


def test_a_backward_not_multiplied_by_grad_output_fails_linearity_and_zero_rows() -> None:
    bug = FUNCTION_BUGS["missing_grad_output"]
    result = refbp.check_autograd_function(bug.fn, *_point("sigmoid", torch.float32), reference=torch.sigmoid)
    failing = {row.reference for row in result.rows if row.verdict == "mismatch"}
    assert {"backward(2g) = 2 backward(g)", "backward(0) = 0", "reference", "fd-full"} <= failing
    message = result.failure_message()
    assert "not linear in grad_output (is its result multiplied by grad_output?)" in message
    assert "backward(0) is not 0" in message


def test_property_rows_never_verify_a_gradient_on_their_own() -> None:
    """A correct Function that does not run in float64, with no reference: only the property
    rows remain, and they hold, yet nothing is verified."""

    class Float32Only(Sigmoid):
        @staticmethod
        def forward(ctx: Any, x: Tensor) -> Tensor:
            if x.dtype == torch.float64:
                raise RuntimeError("this kernel has no float64 version")
            return Sigmoid.forward(ctx, x)

    x = _point("sigmoid", torch.float32)[0]
    result = refbp.check_autograd_function(Float32Only, x)
    assert not result.passed and [t.verdict for t in result.tensors] == ["unverified", "unverified"]  # x, its jvp
    assert "fn does not run in float64 (RuntimeError: this kernel has no float64 version)" in result.failure_message()
    assert all(row.verdict == "ok" for row in result.rows if row.reference.startswith("backward("))
    checked = refbp.check_autograd_function(Float32Only, x, reference=torch.sigmoid)  # the reference verifies it
    assert checked.passed and checked.meta["float64"].startswith("fn does not run in float64")


def test_without_a_reference_finite_differences_of_the_function_judge_it() -> None:
    result = refbp.check_autograd_function(Linear, *_point("linear", torch.float32))
    assert result.passed and {row.reference for row in result.rows} >= {"fd-full", "fd jvp"}
    assert not refbp.check_autograd_function(FUNCTION_BUGS["bias_mean"].fn, *_point("linear", torch.float32)).passed


def test_a_wrong_factor_is_diagnosed_as_a_missing_or_extra_1_over_N() -> None:
    bias_mean = refbp.check_autograd_function(FUNCTION_BUGS["bias_mean"].fn, *_point("linear", torch.float32))
    assert "every entry is 0.333x the reference (an extra 1/N? N = 3)" in bias_mean.failure_message()
    z, y = _point("softmax_cross_entropy", torch.bfloat16)
    summed = refbp.check_autograd_function(FUNCTION_BUGS["cross_entropy_sum"].fn, z, y, reference=F.cross_entropy)
    assert "every entry is 4x the reference (a missing 1/N? N = 4" in summed.failure_message()


def test_a_wrong_jvp_is_contradicted_while_the_backward_passes() -> None:
    bug = FUNCTION_BUGS["linear_jvp_no_weight_term"]
    result = refbp.check_autograd_function(bug.fn, *_point("linear", torch.bfloat16), reference=F.linear)
    assert {t.name: t.verdict for t in result.tensors} == {
        "x": "passed", "W": "passed", "b": "passed", "out (jvp)": "mismatch",
    }  # fmt: skip


class _Noisy(Function):
    """A correct sigmoid whose backward adds relative noise of size ``level`` (an atomics-like
    nondeterministic kernel)."""

    level = 0.0

    @classmethod
    def with_level(cls, level: float) -> type[_Noisy]:
        return type("Noisy", (cls,), {"level": level})

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        s = torch.sigmoid(x)
        ctx.save_for_backward(s)
        return s

    @classmethod
    def backward(cls, ctx: Any, g: Tensor) -> Tensor:
        (s,) = ctx.saved_tensors
        d = g * s * (1 - s)
        return d * (1 + cls.level * torch.randn_like(d))


def test_a_nondeterministic_backward_is_reported_with_its_spread_and_failed_only_beyond_the_allowance() -> None:
    x = _point("sigmoid", torch.float32)[0]
    quiet = refbp.check_autograd_function(_Noisy.with_level(1e-6), x, reference=torch.sigmoid)
    assert quiet.passed, quiet.failure_message()
    assert quiet.meta["spread"]["x"] > 0
    spread_row = next(row for row in quiet.rows if row.reference.startswith("run-to-run"))
    assert spread_row.note.startswith("nondeterministic: runs differ by up to")
    loud = refbp.check_autograd_function(_Noisy.with_level(0.1), x, reference=torch.sigmoid)
    assert not loud.passed
    assert "the backward's runs differ by more than the dtype allows" in loud.failure_message()


def test_a_backward_that_raises_is_a_failing_result_not_a_crash() -> None:
    class WrongShape(Linear):
        @staticmethod
        def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            dJ_dx, dJ_dW, dJ_db = Linear.backward(ctx, g)
            return dJ_dx, dJ_dW[:, :2], dJ_db  # (d_out, 2): not W's shape

    result = refbp.check_autograd_function(WrongShape, *_point("linear", torch.float32))
    assert not result.passed and "the backward raised RuntimeError" in result.failure_message()


def test_result_names_inputs_from_the_forward_and_serialises_to_json() -> None:
    result = refbp.check_autograd_function(Linear, *_point("linear", torch.float16), reference=F.linear)
    assert [t.name for t in result.tensors] == ["x", "W", "b", "out (jvp)"]
    data = json.loads(json.dumps(result.to_dict()))
    assert data["passed"] is True and data["function"] == "Linear" and data["float64"] == "runs"
    assert "backward(g+w) = sum" in result.table()


def test_misuse_is_a_clear_error_naming_the_argument() -> None:
    x = torch.randn(2, 3)
    with pytest.raises(TypeError, match="fn must be"):
        refbp.check_autograd_function(42, x)
    with pytest.raises(ValueError, match="needs the function's inputs"):
        refbp.check_autograd_function(Sigmoid)
    with pytest.raises(ValueError, match="no floating-point tensor"):
        refbp.check_autograd_function(Sigmoid, torch.arange(3))
    with pytest.raises(ValueError, match=r"grad_outputs\[0\] is .*expected a floating tensor of shape \(2, 3\)"):
        refbp.check_autograd_function(Sigmoid, x, grad_outputs=torch.ones(3, 2))
    with pytest.raises(ValueError, match="names="):
        refbp.check_autograd_function(Sigmoid, x, names=("a", "b"))
    with pytest.raises(TypeError, match="reference must be a callable"):
        refbp.check_autograd_function(Sigmoid, x, reference="torch.sigmoid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"reference returned outputs of shapes \[\(2,\)\]; fn returned \[\(2, 3\)\]"):
        refbp.check_autograd_function(Sigmoid, x, reference=lambda t: t.sum(1))
    with pytest.raises(ValueError, match="reference cannot be differentiated at the float64 inputs"):
        refbp.check_autograd_function(Sigmoid, x, reference=lambda t: t.argmax(1))
    with pytest.raises(ValueError, match="runs"):
        refbp.check_autograd_function(Sigmoid, x, runs=0)


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_correct_and_wrong_kernels_on_cuda(dtype: torch.dtype) -> None:
    case, bug = CASES["layer_norm"], FUNCTION_BUGS["layer_norm_no_projection"]
    inputs = tuple(t.cuda() for t in _point("layer_norm", dtype))
    result = refbp.check_autograd_function(case.fn, *inputs, reference=case.reference)
    assert result.passed and result.device.startswith("cuda"), result.failure_message()
    assert not refbp.check_autograd_function(bug.fn, *inputs, reference=case.reference).passed


def test_a_kernel_that_computes_in_float32_inside_is_not_judged_by_its_float64_finite_differences() -> None:
    """FusedCrossEntropy upcasts to float32 whatever its input: its "float64" run is float32
    arithmetic, whose finite differences at float64 steps are rounding noise. Without the
    precision probe they contradicted this correct kernel."""
    z = 2.0 * torch.randn((4, 5), dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 3, 1, 4])
    alone = refbp.check_autograd_function(FusedCrossEntropy, z.float(), y)
    assert [t.verdict for t in alone.tensors] == ["unverified"]
    assert "its outputs do not move when its inputs move by 1e-10 relative" in alone.failure_message()
    assert refbp.check_autograd_function(FusedCrossEntropy, z.float(), y, reference=F.cross_entropy).passed


def test_the_custom_function_example_prints_the_verdicts_it_claims(capsys: pytest.CaptureFixture[str]) -> None:
    assert custom_function.main() == 0
    out = capsys.readouterr().out
    for line in (
        "== FusedCrossEntropy in float32: PASSED",
        "== FusedCrossEntropy in bfloat16: PASSED",
        "== FusedCrossEntropyWithoutGradOutput in float32: FAILED",
        "== FusedCrossEntropyWithoutGradOutput in bfloat16: FAILED",
    ):
        assert line in out
    assert out.count("the backward is not linear in grad_output") == 2  # the wrong kernel, in both dtypes


def test_observers_hear_every_check_autograd_function_until_removed() -> None:
    heard: list[tuple[str, bool]] = []
    remove = add_observer(lambda kind, result: heard.append((kind, result.passed)))
    try:
        x = _point("tanh", torch.float32)[0]
        refbp.check_autograd_function(CASES["tanh"].fn, x, reference=torch.tanh)
        refbp.check_autograd_function(FUNCTION_BUGS["tanh_from_input"].fn, x, reference=torch.tanh)
    finally:
        remove()
    refbp.check_autograd_function(CASES["tanh"].fn, x, reference=torch.tanh)
    assert heard == [("check_autograd_function", True), ("check_autograd_function", False)]
    with pytest.raises(TypeError, match="observer must be callable"):
        add_observer("print")  # type: ignore[arg-type]
