"""The cases of a sweep: drawn (``random_stack``), put in order (``case_order``), checked
(``check_case``) and kept as outcomes (``CaseOutcome``), on the verify floor so that both the
report's one-process sweep (refbp.apps.sweep) and its sharded twin (refbp.distributed.
sharded_report) build on them, neither reaching into the other.

    order = case_order(specs, devices=["cpu"], dtypes=["float64"])   # [(label, spec)] in report order
    outcomes = [CaseOutcome(i, label, spec, check_case(spec, "auto")) for i, (label, spec) in enumerate(order, 1)]

A share of the float64 cases (``takes_order2``) is also checked at order 2: check_second_order's
H v along a random direction, kept in the result's ``meta["order2"]`` (an ``Order2Outcome``:
passed, failed, unverified, or "no rule" when some layer or the loss has no second-order rule).

A spec is anything with the fields and methods ``SweepSpec`` lists: an MLP's CaseSpec, a layer
stack's StackSpec (refbp.verify), a GPT's GPTSpec (refbp.models); all are frozen dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from torch import Tensor

from ..nn.activations import ACTIVATIONS
from ..nn.losses import LOSSES
from ..nn.network import Network
from .cases import Case, CaseSpec
from .check import CheckResult, check
from .second_order import check_second_order
from .stacks import StackSpec

__all__ = [
    "IMAGE_KINDS",
    "ORDER2_EVERY",
    "CaseOutcome",
    "Order2Outcome",
    "SweepSpec",
    "case_order",
    "check_case",
    "check_order2",
    "finite",
    "kind_of",
    "order2_outcome",
    "random_image_stack",
    "random_sequence_stack",
    "random_stack",
    "takes_order2",
]


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


ORDER2_EVERY = 4
"""One float64 case in ORDER2_EVERY (those whose spec's seed it divides: the same cases however the
sweep is ordered or sharded) is also checked at order 2. A second-order check costs about three
gradient checks; a quarter of the float64 cases keeps ``refbp report``'s added time near 30 s."""

ORDER2_VERDICTS = ("passed", "failed", "unverified", "no rule")
"""An order-2 check's outcome: every H v entry verified; some entry contradicted; none
contradicted but some verified by no reference (a point exactly on a kink); not checked because
a layer or the loss has no second-order rule yet."""


@dataclass(frozen=True)
class Order2Outcome:
    """A case's order-2 check (refbp.verify.second_order), reduced to what the report shows.

    Attributes:
        verdict: one of ORDER2_VERDICTS.
        note: what has no rule, or the failing products ("Hv[W1] mismatch, ..."); "" when passed.
        comparisons: rows compared (0 for "no rule").
        margin: max over the rows of max_abs_error / allowed (0.0 for "no rule").
    """

    verdict: str
    note: str = ""
    comparisons: int = 0
    margin: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "note": self.note, "comparisons": self.comparisons,
                "margin": finite(self.margin)}  # fmt: skip


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
    def order2(self) -> Order2Outcome | None:
        """The case's order-2 check, when it is one of the share that gets one (``takes_order2``)."""
        outcome = self.result.meta.get("order2")
        return outcome if isinstance(outcome, Order2Outcome) else None

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
            "order2": None if self.order2 is None else self.order2.to_dict(),
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


def _head(rng: random.Random, layers: list[Any], *, rows: bool) -> str:
    """A loss, and the last linear map (and output activation) it needs, appended to ``layers``;
    ``rows``: flatten first (images), else the map reads the last dimension (sequences)."""
    loss = rng.choice(sorted(LOSSES))
    if rows:
        layers.append(["flatten"])
    layers.append(["linear", rng.randint(2 if LOSSES[loss].targets == "classes" else 1, 4)])
    if LOSSES[loss].output_activation not in (None, "identity"):
        layers.append([LOSSES[loss].output_activation])
    return loss


def _window(rng: random.Random, n: int, *, dilated: bool) -> tuple[int, int, int, int]:
    """(kernel, stride, padding, dilation) of a pooling window over n entries: padding at most
    half the kernel (torch's rule), stride 1 .. kernel + 1 (overlapping, touching, skipping)."""
    k = rng.randint(1, min(3, n))
    p = rng.randint(0, k // 2)
    d = 2 if dilated and p == 0 and 2 * (k - 1) + 1 <= n and rng.random() < 0.3 else 1
    return k, rng.randint(1, k + 1), p, d


IMAGE_KINDS = ("conv", "maxpool", "avgpool", "adaptive_avgpool", "batchnorm2d", "groupnorm", "softmax", "activation")
"""What ``random_image_stack`` draws its layers from (``include``: one of these at least once)."""


def random_image_stack(rng: random.Random, *, max_depth: int = 3, include: str | None = None) -> StackSpec:
    """A random CNN on (N, C, H, W) images (one in five on (N, C, L) for Conv1d): 1..max_depth
    of Conv2d (stride, padding, dilation, groups), an activation, MaxPool2d, AvgPool2d (either
    count_include_pad), AdaptiveAvgPool2d, BatchNorm2d, GroupNorm, Softmax/LogSoftmax over a
    drawn dimension; then Flatten and Linear. One in six starts with a MaxPool2d on integer
    entries, whose windows then hold ties (torch credits the first maximum). ``include``: a kind
    of IMAGE_KINDS the stack has at least once (where its input allows it: images for pooling)."""
    training = rng.random() < 0.6
    if rng.random() < 0.2:  # a sequence for Conv1d
        first = [rng.randint(1, 3), rng.randint(1, 6)]
        kinds = ["conv", "activation", "groupnorm", "softmax"]
    else:
        first = [rng.randint(1, 3), rng.randint(1, 5), rng.randint(1, 5)]
        kinds = ["conv", "activation", "maxpool", "avgpool", "adaptive_avgpool", "batchnorm2d", "groupnorm", "softmax"]
    integers = len(first) == 3 and rng.random() < 1 / 6
    chosen = ["maxpool"] if integers else ["conv"] if rng.random() < 0.6 else []  # most CNNs start with one
    drawn = [k for k in kinds if not (integers and k == "activation")]  # integers: not on relu's kink at 0
    chosen += [rng.choice(drawn) for _ in range(rng.randint(1, max_depth) - len(chosen) // 2)]
    if include in drawn:
        chosen.insert(rng.randint(int(integers), len(chosen)), include)
    layers: list[Any] = []
    shape, batch = list(first), rng.randint(1, 3)
    for kind in chosen:
        layer, shape = _image_layer(rng, kind, shape)
        if layer:
            layers.append(layer)
        if kind == "batchnorm2d" and math.prod(shape[1:]) < 2:  # eval too: StackSpec checks in training mode
            batch = max(batch, 2)  # batch statistics need two values per channel
    loss = _head(rng, layers, rows=True)
    given = {"shape": first, **({"integers": True} if integers else {})}
    spec = {"input": given, "layers": layers, "loss": loss, "seed": rng.randint(0, 2**31 - 1), "batch": batch,
            "training": training}  # fmt: skip
    return StackSpec.from_dict(spec)


def _image_layer(rng: random.Random, kind: str, shape: list[int]) -> tuple[list[Any] | None, list[int]]:
    """One layer of ``kind`` that fits an input of ``shape`` (C, *sizes), and its output's shape."""
    C, sizes = shape[0], shape[1:]
    if kind == "conv":
        groups = rng.choice([g for g in range(1, C + 1) if C % g == 0])
        C_out = groups * rng.randint(1, max(1, 3 // groups))
        padding: Any = rng.choice(["ints", "ints", "same", "valid"])
        stride = [1 if padding == "same" else rng.randint(1, 2) for _ in sizes]
        dilation = [rng.randint(1, 2) for _ in sizes]
        pads = [rng.randint(0, 2) for _ in sizes] if padding == "ints" else [0 for _ in sizes]
        kernel = []
        for n, p, d in zip(sizes, pads, dilation, strict=True):
            room = 3 * d if padding == "same" else n + 2 * p  # "same" pads whatever the kernel needs
            kernel.append(rng.randint(1, max(1, min(3, (room - 1) // d + 1))))
        if padding == "same":
            out = list(sizes)
        else:
            geometry = zip(sizes, kernel, stride, pads, dilation, strict=True)
            out = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in geometry]
        conv = {"kernel": kernel, "stride": stride, "padding": pads if padding == "ints" else padding,
                "dilation": dilation, "groups": groups, "bias": rng.random() < 0.8}  # fmt: skip
        return ["conv1d" if len(sizes) == 1 else "conv2d", C_out, conv], [C_out, *out]
    if kind == "activation":
        return [rng.choice(sorted(ACTIVATIONS))], shape
    if kind in ("maxpool", "avgpool"):
        windows = [_window(rng, n, dilated=kind == "maxpool") for n in sizes]
        ks, ss, ps, ds = ([w[i] for w in windows] for i in range(4))
        pool: dict[str, Any] = {"kernel": ks, "stride": ss, "padding": ps}
        pool |= {"dilation": ds} if kind == "maxpool" else {"count_include_pad": rng.random() < 0.5}
        out = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in zip(sizes, ks, ss, ps, ds, strict=True)]
        return [kind, pool], [C, *out]
    if kind == "adaptive_avgpool":
        size = [rng.choice([None, 1, 2, 3]) for _ in sizes]
        return [kind, size], [C, *(n if o is None else o for n, o in zip(sizes, size, strict=True))]
    if kind == "batchnorm2d":
        return [kind, rng.choice([{}, {"affine": False}])], shape
    if kind == "groupnorm":  # torch normalises groups of two values or more
        counts = [g for g in range(1, C + 1) if C % g == 0 and C // g * math.prod(sizes) > 1]
        return ([kind, rng.choice(counts), rng.choice([{}, {"affine": False}])] if counts else None), shape
    return [rng.choice(["softmax", "logsoftmax"]), rng.randint(1, len(shape))], shape


def random_sequence_stack(rng: random.Random) -> StackSpec:
    """A random recurrent network: token indices through an Embedding, or (N, T, d) numbers;
    an RNN (tanh or relu), LSTM or GRU of 1-2 stacked layers, batch_first either way, bias or
    not, an initial state or zeros; in one of three an activation, LayerNorm, Dropout or
    LogSoftmax after it; a Linear on every step, or on the flattened sequence in one of four."""
    training = rng.random() < 0.6
    length, width = rng.randint(1, 3), rng.randint(1, 3)
    tokens = rng.random() < 0.5
    layers: list[Any] = [["embedding", width]] if tokens else []
    kind = rng.choice(["rnn", "lstm", "gru"])
    options: dict[str, Any] = {"layers": rng.randint(1, 2), "bias": rng.random() < 0.8,
                               "batch_first": rng.random() < 0.5, "initial_state": rng.random() < 0.5}  # fmt: skip
    if kind == "rnn":
        options["nonlinearity"] = rng.choice(["tanh", "relu"])
    layers.append([kind, rng.randint(1, 3), options])
    after = rng.choice([None, None, ["activation"], ["layernorm"], ["dropout", 0.25], ["logsoftmax", -1]])
    if after == ["activation"]:
        after = [rng.choice(sorted(ACTIVATIONS))]
    if after is not None:
        layers.append(after)
    loss = _head(rng, layers, rows=rng.random() < 0.25)
    given: Any = {"vocab": rng.randint(2, 6), "length": length} if tokens else {"shape": [length, width]}
    spec = {"input": given, "layers": layers, "loss": loss, "seed": rng.randint(0, 2**31 - 1),
            "batch": rng.randint(1, 3), "training": training}  # fmt: skip
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
    """Build a case and check refbp's own gradients on it; for the share ``takes_order2`` picks,
    its H v too, in ``meta["order2"]``."""
    case = spec.build()
    result = check(case.net, case.X, case.y, fd_mode=fd_mode, seed=spec.seed)
    if takes_order2(spec):
        result.meta["order2"] = check_order2(spec)
    return result


def takes_order2(spec: SweepSpec) -> bool:
    """True for the float64 cases whose seed ORDER2_EVERY divides: the share checked at order 2."""
    return spec.dtype == "float64" and spec.seed % ORDER2_EVERY == 0


def check_order2(spec: SweepSpec) -> Order2Outcome:
    """The case's H v along a random direction (seeded by the case) on a fresh build of it."""
    case = spec.build()
    return order2_outcome(case.net, case.X, case.y, seed=spec.seed)


def order2_outcome(net: Network, X: Tensor, y: Tensor, *, seed: int = 0) -> Order2Outcome:
    """check_second_order's H v at (X, y) (its dropout masks drawn once and used by every route),
    reduced to an Order2Outcome; "no rule" when a layer or the loss has none yet."""
    try:
        result = check_second_order(net, X, y, seed=seed)
    except NotImplementedError as err:  # a layer or the loss without second-order rules yet
        return Order2Outcome("no rule", str(err).split(" (Layer.tangent")[0])
    margin = max((row.margin for row in result.rows), default=0.0)
    if result.passed:
        return Order2Outcome("passed", "", len(result.rows), margin)
    bad = [t for t in result.tensors if not t.passed]
    note = ", ".join(f"{t.name} {t.verdict}" for t in bad[:4]) + (f" (+{len(bad) - 4})" if len(bad) > 4 else "")
    kinks = result.meta.get("kinks") or []
    note += f"; on a kink: {', '.join(kinks)}" if kinks else ""
    verdict = "failed" if any(t.verdict == "mismatch" for t in bad) else "unverified"
    return Order2Outcome(verdict, note, len(result.rows), margin)
