"""CaseSpec.from_dict takes a spec from outside (refbp check --case/--spec) strictly: a value
of the wrong type or range is refused with the key, the value and what was expected, never
converted, and a network that cannot run is refused before anything is allocated."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from refbp.apps.sweep import sweep_specs
from refbp.models.gpt_cases import GPTSpec
from refbp.verify.cases import MAX_LAYERS, CaseSpec
from refbp.verify.specs import spec_from_dict
from refbp.verify.stacks import StackSpec

BASE: dict[str, Any] = {"dims": [3, 2], "activations": ["tanh"], "loss": "mse"}


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"batch": True}, TypeError, "batch=True must be an int >= 1, got bool"),
        ({"batch": 2.0}, TypeError, "batch=2.0 must be an int >= 1, got float"),
        ({"batch": 0}, ValueError, "batch=0 is out of range; expected an int >= 1"),
        ({"seed": 1.7}, TypeError, r"seed=1.7 must be an int in \[0, 4294967295\], got float"),
        ({"seed": "1"}, TypeError, "seed='1' must be an int"),
        ({"seed": -1}, ValueError, r"seed=-1 is out of range; expected an int in \[0, 4294967295\]"),
        ({"seed": 2**32}, ValueError, "seed=4294967296 is out of range"),
        ({"weight_scale": "3"}, TypeError, "weight_scale='3' must be a finite number > 0, got str"),
        ({"weight_scale": float("nan")}, ValueError, "weight_scale=nan is out of range; expected a finite number > 0"),
        ({"weight_scale": float("inf")}, ValueError, "weight_scale=inf is out of range"),
        ({"weight_scale": 0}, ValueError, "weight_scale=0 is out of range; expected a finite number > 0"),
        ({"weight_scale": -2.5}, ValueError, "weight_scale=-2.5 is out of range"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay=-0.1 is out of range; expected a finite number >= 0"),
        ({"weight_decay": "0.1"}, TypeError, "weight_decay='0.1' must be a finite number >= 0, got str"),
        ({"weight_decay": None}, TypeError, "weight_decay=None must be a finite number >= 0, got NoneType"),
        ({"weight_decay": 10**400}, ValueError, "weight_decay=1000.* is out of range"),
        ({"dtype": "float8"}, ValueError, "dtype='float8'; expected one of float64, float32, float16, bfloat16"),
        ({"dtype": 64}, ValueError, "dtype=64; expected one of"),
        ({"device": "tpu"}, ValueError, "device='tpu'; expected 'auto', 'cpu', 'cuda' or 'cuda:K'"),
        ({"device": 0}, ValueError, "device=0; expected"),
        ({"dims": 5}, TypeError, r"dims=5 must be a list of layer sizes \[d_0, ..., d_L\], got int"),
        ({"dims": "32"}, TypeError, "dims='32' must be a list of layer sizes"),
        ({"dims": [3, True]}, TypeError, r"dims\[1\]=True must be an int >= 1, got bool"),
        ({"dims": [3, 2.0]}, TypeError, r"dims\[1\]=2.0 must be an int >= 1, got float"),
        ({"dims": [3, 0]}, ValueError, r"dims\[1\]=0 is out of range; expected an int >= 1"),
        ({"dims": [3]}, ValueError, "dims lists 1 sizes"),
        ({"activations": "tanh"}, TypeError, "activations='tanh' must be a list of names"),
        ({"activations": ["tanh", "tanh"]}, ValueError, "activations has 2 names but dims has 1 layers"),
        ({"activations": ["swish"]}, ValueError, "swish"),
        ({"loss": 3}, TypeError, "loss=3 must be a loss name"),
        ({"loss": "hinge"}, ValueError, "loss='hinge' is not a known loss"),
        ({"depth": 3}, ValueError, r"unknown keys \['depth'\]"),
    ],
)
def test_from_dict_refuses_each_bad_value_naming_the_key(
    change: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        CaseSpec.from_dict({**BASE, **change})


def test_from_dict_needs_dims_activations_and_loss() -> None:
    with pytest.raises(ValueError, match="the case spec needs 'loss'"):
        CaseSpec.from_dict({"dims": [3, 2], "activations": ["tanh"]})
    with pytest.raises(TypeError, match="a case spec must be a dict"):
        CaseSpec.from_dict([3, 2])  # type: ignore[arg-type]


def test_a_million_layers_or_a_gigantic_width_is_refused_at_once() -> None:
    start = time.perf_counter()
    layers = 10**6
    with pytest.raises(ValueError, match=f"dims lists {layers + 1} sizes .*1 to MAX_LAYERS={MAX_LAYERS} layers"):
        CaseSpec.from_dict({**BASE, "dims": [2] * (layers + 1), "activations": ["tanh"] * layers})
    with pytest.raises(ValueError, match=r"needs .* GiB of memory, but only .* is available here"):
        CaseSpec.from_dict({**BASE, "dims": [3, 10**12]})
    with pytest.raises(ValueError, match=r"batch=10000000000000\) needs .* GiB of memory"):
        CaseSpec.from_dict({**BASE, "batch": 10**13})
    assert time.perf_counter() - start < 5.0  # refused before allocating, not after swapping


def test_every_sweep_spec_round_trips_through_json_unchanged() -> None:
    specs = [spec for _, spec in sweep_specs(60, seed=0)]
    assert {type(spec) for spec in specs} == {CaseSpec, StackSpec, GPTSpec}  # every kind the report sweeps
    for spec in specs:
        assert type(spec).from_dict(json.loads(spec.to_json())) == spec
        assert spec_from_dict(json.loads(spec.to_json())) == spec  # what refbp check --case reads


def test_ints_where_floats_are_expected_are_taken_exactly() -> None:
    spec = CaseSpec.from_dict({**BASE, "weight_decay": 0, "weight_scale": 3, "seed": 2**32 - 1})
    assert (spec.weight_decay, spec.weight_scale, spec.seed) == (0.0, 3.0, 2**32 - 1)
    assert isinstance(spec.weight_scale, float) and spec.build().net.dims == [3, 2]
