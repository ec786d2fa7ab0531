"""The cases of a sweep: drawn (``random_stack``), put in order (``case_order``), checked
(``check_case``) and kept as outcomes (``CaseOutcome``), on the verify floor so that both the
report's one-process sweep (refbp.apps.sweep) and its sharded twin (refbp.distributed.
sharded_report) build on them, neither reaching into the other.

    order = case_order(specs, devices=["cpu"], dtypes=["float64"])   # [(label, spec)] in report order
    outcomes = [CaseOutcome(i, label, spec, check_case(spec, "auto")) for i, (label, spec) in enumerate(order, 1)]

A spec is anything with the fields and methods ``SweepSpec`` lists: an MLP's CaseSpec, a layer
stack's StackSpec (refbp.verify), a GPT's GPTSpec (refbp.models); all are frozen dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ..nn.activations import ACTIVATIONS
from ..nn.losses import LOSSES
from .cases import Case, CaseSpec
from .check import CheckResult, check
from .stacks import StackSpec

__all__ = ["CaseOutcome", "SweepSpec", "case_order", "check_case", "finite", "kind_of", "random_stack"]


class SweepSpec(Protocol):
    """What the sweep needs of a case spec: CaseSpec, StackSpec or refbp.models' GPTSpec."""

    @property
    def seed(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def loss(self) -> str: ...
    def build(self) -> Case[Any]: ...
    def to_json(self) -> str: ...
    def describe(self) -> str: ...
    def command(self) -> str: ...
    def components(self) -> list[str]: ...


@dataclass
class CaseOutcome:
    """One case of the sweep and its CheckResult, reduced to what the report shows."""

    id: int
    label: str
    spec: SweepSpec
    result: CheckResult

    @property
    def kind(self) -> str:
        """ "mlp", "stack" or "gpt"."""
        return kind_of(self.spec)

    @property
    def margin(self) -> float:
        """max over rows of max_abs_error / allowed (a verified entry passes at <= 1)."""
        return max((row.margin for row in self.result.rows), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        worst = max(self.result.rows, key=lambda r: r.margin)
        return {
            "id": self.id,
            "label": self.label,
            "kind": self.kind,
            "spec": json.loads(self.spec.to_json()),
            "describe": self.spec.describe(),
            "passed": self.result.passed,
            "margin": finite(self.margin),
            "n_excluded": self.result.n_excluded,
            "n_unverified": sum(row.n_unverified for row in self.result.rows),
            "worst": {
                "name": worst.name,
                "reference": worst.reference,
                "max_rel_error": finite(worst.max_rel_error),
                "allowed": finite(worst.allowed),
            },
            "command": self.spec.command(),
            "failures": [row.to_dict() for row in self.result.failures],
            "tensors": [t.to_dict() for t in self.result.tensors if not t.passed],
        }


def kind_of(spec: SweepSpec) -> str:
    """ "mlp", "stack", or the model a model's spec names in its JSON ("model": "gpt")."""
    if isinstance(spec, CaseSpec):
        return "mlp"
    if isinstance(spec, StackSpec):
        return "stack"
    model = json.loads(spec.to_json()).get("model")
    if not isinstance(model, str):
        raise TypeError(f"{type(spec).__name__} is no CaseSpec or StackSpec, and its JSON names no 'model'")
    return model


def finite(x: float) -> float | str:
    """x, or its name ("inf", "nan") where JSON has no number for it."""
    return x if x == x and abs(x) != float("inf") else str(x)


# ---- drawing --------------------------------------------------------------------------------
def random_stack(rng: random.Random, *, max_depth: int = 4, max_width: int = 8) -> StackSpec:
    """A random layer stack, as refbp.strategies.stack_specs draws them, from ``rng``."""
    names, losses = sorted(ACTIVATIONS), sorted(LOSSES)
    loss = rng.choice(losses)
    training = rng.random() < 0.6
    tokens = rng.random() < 0.25
    width = rng.randint(1, max_width)
    input_width = width
    layers: list[Any] = []
    vocab, length, rows = 0, width, True
    if tokens:
        vocab, length, width = rng.randint(2, 8), rng.randint(1, 4), rng.randint(1, max_width)
        layers.append(["embedding", width])
        rows = False
    for _ in range(rng.randint(1, max_depth)):
        kind = rng.choice(["linear", "activation", "layernorm", "batchnorm", "dropout", "residual"])
        if kind == "batchnorm" and not rows:
            layers.append(["flatten"])
            rows, width = True, width * length
        if kind == "linear":
            width = rng.randint(1, max_width)
            layers.append(["linear", width] + ([{"bias": False}] if rng.random() < 0.2 else []))
        elif kind == "activation":
            layers.append([rng.choice(names)])
        elif kind == "layernorm":
            layers.append(["layernorm", rng.choice([{}, {"bias": False}, {"affine": False}])])
        elif kind == "batchnorm":
            layers.append(["batchnorm", rng.choice([{}, {"affine": False}])])
        elif kind == "dropout":
            layers.append(["dropout", rng.choice([0.1, 0.25, 0.5])])
        else:
            inner = [["linear", width], [rng.choice(names)]] if rng.random() < 0.7 else [["layernorm"]]
            layers.append(["residual", inner])
    if not rows and rng.random() < 0.5:
        layers.append(["flatten"])
        rows = True
    out = rng.randint(2 if LOSSES[loss].targets == "classes" else 1, 5)
    layers.append(["linear", out])
    if LOSSES[loss].output_activation not in (None, "identity"):
        layers.append([LOSSES[loss].output_activation])
    batchnorm = any(layer[0] == "batchnorm" for layer in layers)
    spec = {
        "input": {"vocab": vocab, "length": length} if tokens else input_width,
        "layers": layers, "loss": loss, "seed": rng.randint(0, 2**31 - 1),
        "batch": rng.randint(2 if batchnorm and training else 1, 8), "training": training,
    }  # fmt: skip
    return StackSpec.from_dict(spec)


# ---- ordering and checking ------------------------------------------------------------------
S = TypeVar("S", bound=SweepSpec)


def case_order(specs: Sequence[tuple[str, S]], devices: list[str], dtypes: list[str]) -> list[tuple[str, S]]:
    """Every (label, spec) the sweep checks, in report order: each network in each device and dtype."""
    return [
        (label, dataclasses.replace(base, dtype=dtype, device=device))  # type: ignore[type-var]
        for label, base in specs
        for device in devices
        for dtype in dtypes
    ]


def check_case(spec: SweepSpec, fd_mode: str) -> CheckResult:
    """Build a case and check refbp's own gradients on it."""
    case = spec.build()
    return check(case.net, case.X, case.y, fd_mode=fd_mode, seed=spec.seed)
