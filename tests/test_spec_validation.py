"""Specs from outside are checked strictly (issue 16): a layer spec's misspelt option, wrong
type or extra argument is refused naming the layer's position, by StackSpec.from_dict and by
the command line (exit 2, one ``error:`` line); and the spec kinds come from one registry that
refbp.models fills without refbp.verify importing it (issue 17)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from refbp.apps.cli import main
from refbp.models.gpt_cases import GPTSpec
from refbp.verify.cases import CaseSpec
from refbp.verify.specs import SPEC_KINDS, Spec, register_spec_kind, spec_from_dict
from refbp.verify.stacks import StackSpec

BAD_LAYERS: list[tuple[list[Any], type[Exception], str]] = [
    ([["linear", 2, {"bais": False}]], ValueError, "layers[0]: linear has no option 'bais'"),
    ([["layernorm", {"afine": False}]], ValueError, "layers[0]: layernorm has no option 'afine'"),
    ([["batchnorm", {"bias": False}]], ValueError, "layers[0]: batchnorm has no option 'bias'"),
    ([["linear", 2, {"bias": "no"}]], TypeError, "layers[0]: linear's option 'bias'='no' must be true or false"),
    ([["layernorm", {"affine": 0}]], TypeError, "layers[0]: layernorm's option 'affine'=0 must be true or false"),
    ([["linear", 3], ["tanh", 3]], ValueError, "layers[1]=['tanh', 3]: tanh takes no arguments"),
    ([["flatten", 5]], ValueError, "layers[0]=['flatten', 5]: flatten takes no arguments"),
    ([["linear", 2, 7]], ValueError, "layers[0]=['linear', 2, 7]: linear takes d_out, got 2"),
    ([["residual", [["linear", 3], ["relu", 1]]]], ValueError, "layers[0][1][1]=['relu', 1]: relu takes no"),
    ([["leaky_relu", {"slope": "0.2"}]], TypeError, "layers[0]: leaky_relu's option 'slope'='0.2'"),
    ([["tanh", {"slope": 0.2}]], ValueError, "layers[0]: tanh has no option 'slope'; its options are none"),
    ([["dropout", 1.5]], ValueError, "layers[0][1] (p)=1.5 is out of range"),
    ([["dropout", "half"]], TypeError, "layers[0][1] (p)='half' must be a finite number"),
]


@pytest.mark.parametrize(("layers", "error", "message"), BAD_LAYERS, ids=lambda v: str(v)[:40])
def test_a_layer_spec_with_a_wrong_option_type_or_argument_is_refused_naming_its_position(
    layers: list[Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        StackSpec.from_dict({"input": 3, "layers": layers, "loss": "mse"})
    assert message in str(raised.value)


def test_bias_false_and_its_misspelling_do_not_build_the_same_network() -> None:
    without = StackSpec.from_dict({"input": 3, "layers": [["linear", 2, {"bias": False}]], "loss": "mse"}).build()
    assert "b1" not in without.net.parameters()  # the option that is spelt right is obeyed
    with pytest.raises(ValueError, match="no option 'bais'"):
        StackSpec.from_dict({"input": 3, "layers": [["linear", 2, {"bais": False}]], "loss": "mse"})


@pytest.mark.parametrize(("layers", "error", "message"), BAD_LAYERS[:7], ids=lambda v: str(v)[:40])
@pytest.mark.parametrize("command", ["check --case", "explain --stack"])
def test_the_command_line_refuses_a_bad_layer_spec_with_exit_2_and_one_line(
    layers: list[Any], error: type[Exception], message: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = json.dumps({"input": 3, "layers": layers, "loss": "mse"})
    assert main([*command.split(), spec]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


def test_every_spec_kind_is_read_back_by_the_one_registry() -> None:
    specs: list[Spec] = [
        CaseSpec((2, 3, 1), ("tanh", "sigmoid"), "bce", seed=4),
        StackSpec.from_dict({"input": 3, "layers": [["linear", 2]], "loss": "mse", "seed": 2}),
        GPTSpec(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=4, seed=3),
    ]
    assert {spec.kind for spec in specs} == set(SPEC_KINDS) == {"mlp", "stack", "gpt"}
    for spec in specs:
        assert isinstance(spec, Spec)
        again = spec_from_dict(json.loads(spec.to_json()))
        assert type(again) is type(spec) and again == spec and again.to_dict() == spec.to_dict()


def test_a_second_class_cannot_take_a_registered_kind_or_marker() -> None:
    class Impostor:
        kind = "mlp"

    with pytest.raises(ValueError, match="clashes with CaseSpec's 'mlp'"):
        register_spec_kind(Impostor, marker="dims")
    register_spec_kind(CaseSpec, marker="dims")  # registering the same class again is harmless
    assert SPEC_KINDS["mlp"].spec_class is CaseSpec


def test_verify_never_imports_models_and_models_registers_the_gpt_spec() -> None:
    code = (
        "import sys; import refbp.verify.specs as s; "
        "assert not any(m.startswith('refbp.models') for m in sys.modules), 'verify imported models'; "
        "assert 'gpt' not in s.SPEC_KINDS; import refbp.models; assert s.SPEC_KINDS['gpt'].marker == 'model'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
