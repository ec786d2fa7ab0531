"""A test case: a network together with the point (X, y) at which to check its gradients.

Everything is drawn from one integer seed on the CPU in float64 and then converted, so a
case is reproducible from its description alone on any device and in any dtype.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import Tensor

from ..nn.activations import get_activation
from ..nn.layer import Params, Tap
from ..nn.losses import get_loss
from ..nn.mlp import MLP
from ..nn.network import Network, resolve_device
from ..nn.pieces import Pieces
from ..nn.validation import check_fits_in_memory, check_int, check_seed

__all__ = [
    "BOUNDARY_OFFSET",
    "DTYPES",
    "KINK_MARGIN",
    "MAX_LAYERS",
    "REGIMES",
    "TRAIN_STEPS",
    "Case",
    "CaseSpec",
    "check_choice",
    "check_device",
    "check_dims",
    "check_network_fits",
    "check_number",
    "check_spec_keys",
    "kink_distance",
]

KINK_MARGIN = 1e-4
"""Pre-activations of relu/leaky_relu layers closer than this to 0 put a case "on a kink".
Finite-difference steps move z by about FD_STEP * |a| ~ 1e-5, so 1e-4 keeps central differences
on one side of every kink; the harness still detects and excludes any crossing that happens."""


REGIMES = ("plain", "trained", "boundary")
"""How a case's network is prepared after it is drawn: "plain" as drawn; "trained" by
TRAIN_STEPS steps of gradient descent with refbp's own gradients on its (X, y) (bce targets
rounded to 0 or 1, so that the outputs become confident, as a classifier's do); "boundary"
with every piecewise activation's first pre-activation moved to BOUNDARY_OFFSET from a
boundary of its pieces (relu's 0, softplus's threshold, elu's 0), where finite differences
must notice the crossing."""

TRAIN_STEPS = 200
"""Gradient-descent steps of the "trained" regime: enough for a small network to fit its few
points and for sigmoid outputs under bce to come within 1e-4 of 0 or 1."""

TRAIN_LEARNING_RATE = 0.5
"""The step size of the "trained" regime, halved whenever a step makes J worse (so that no
drawn network diverges)."""

BOUNDARY_OFFSET = 1e-7
"""How far from a boundary the "boundary" regime puts a pre-activation: below every
finite-difference step (>= 6e-6), so that the differences straddle the boundary."""


@dataclass(frozen=True)
class CaseSpec:
    """What defines a case; ``build()`` makes the tensors. JSON-friendly, so a failing case
    can be written down and rebuilt exactly (refbp.verify.specs: the kind "mlp", told apart by
    "dims")."""

    kind: ClassVar[str] = "mlp"
    dims: tuple[int, ...]
    activations: tuple[str, ...]
    loss: str
    seed: int
    dtype: str = "float64"
    device: str = "cpu"
    batch: int = 4
    weight_decay: float = 0.0
    weight_scale: float = 1.0
    regime: str = "plain"

    def build(self) -> Case[MLP]:
        """The network and (X, y), drawn from ``seed``."""
        dtype = getattr(torch, self.dtype)
        device = resolve_device(self.device)
        net64 = MLP.random(
            list(self.dims), activations=list(self.activations), loss=self.loss,
            seed=self.seed, dtype=torch.float64, weight_decay=self.weight_decay,
        )  # fmt: skip
        if self.weight_scale != 1.0:
            net64 = MLP(
                [W * self.weight_scale for W in net64.weights], net64.biases,
                list(self.activations), self.loss, self.weight_decay,
            )  # fmt: skip
        generator = torch.Generator().manual_seed(self.seed + 1)
        N, d_0, d_L = self.batch, self.dims[0], self.dims[-1]
        X = torch.empty(N, d_0, dtype=torch.float64).uniform_(-2.0, 2.0, generator=generator)  # (N, d_0)
        y: Tensor
        if get_loss(self.loss).targets == "classes":
            y = torch.randint(0, d_L, (N,), generator=generator)  # (N,) class indices
        elif self.loss == "bce":
            y = torch.rand(N, d_L, dtype=torch.float64, generator=generator)  # (N, d_L) in [0, 1]
        else:
            y = torch.empty(N, d_L, dtype=torch.float64).uniform_(-1.0, 1.0, generator=generator)
        if self.regime == "trained":
            _check_trainable(self.loss)
            y = (y > 0.5).to(torch.float64) if self.loss == "bce" else y
            _train(net64, X, y)
        elif self.regime == "boundary":
            _move_to_boundaries(net64, X)
        net = net64.to(dtype=dtype, device=device)
        X = X.to(dtype=dtype, device=device)
        y = y.to(dtype=dtype, device=device) if y.is_floating_point() else y.to(device)
        return Case(spec=self, net=net, X=X, y=y)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object ``from_dict`` reads back."""
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseSpec:
        """Build from a dict such as ``refbp check --spec`` reads (JSON), checking every value.

        Strict, because the dict comes from outside: a value of the wrong type is refused, not
        converted (a seed of 1.7 is not seed 1, and true is not a batch of 1), unknown keys are
        refused, and a network too deep (MAX_LAYERS) or too large for this machine's memory is
        refused before anything is allocated. Each error names the key, its value and what was
        expected.
        """
        check_spec_keys(data, allowed=set(cls.__dataclass_fields__), required=("dims", "activations", "loss"))
        dims = check_dims(data["dims"])
        activations = _check_names(data["activations"], "activations", count=len(dims) - 1)
        for k, name in enumerate(activations):
            get_activation(name, argument=f"activations[{k}]")
        if not isinstance(data["loss"], str):
            raise TypeError(f"loss={data['loss']!r} must be a loss name (a str), got {type(data['loss']).__name__}")
        get_loss(data["loss"])
        batch = check_int(data.get("batch", cls.batch), "batch", minimum=1)
        check_network_fits(dims, batch, "the case spec's network")
        spec = cls(
            dims=dims,
            activations=activations,
            loss=data["loss"],
            seed=check_seed(data.get("seed", 0), "seed"),
            dtype=check_choice(data.get("dtype", cls.dtype), "dtype", DTYPES),
            device=check_device(data.get("device", cls.device)),
            batch=batch,
            weight_decay=check_number(data.get("weight_decay", cls.weight_decay), "weight_decay", positive=False),
            weight_scale=check_number(data.get("weight_scale", cls.weight_scale), "weight_scale", positive=True),
            regime=check_choice(data.get("regime", cls.regime), "regime", REGIMES),
        )
        if spec.regime == "trained":
            _check_trainable(spec.loss)
        return spec

    def command(self) -> str:
        """The shell command that checks exactly this case."""
        return f"refbp check --case '{self.to_json()}'"

    def components(self) -> list[str]:
        """ "Dense" and the activations."""
        return sorted({"Dense", *self.activations})

    def describe(self) -> str:
        """The network in one short line: dims, activations, loss, batch and what is unusual."""
        text = f"{'-'.join(map(str, self.dims))} {'/'.join(self.activations)}, {self.loss}, N={self.batch}"
        if self.weight_decay:
            text += f", lambda={self.weight_decay:g}"
        if self.weight_scale != 1.0:
            text += f", W x {self.weight_scale:g}"
        return text + ("" if self.regime == "plain" else f", {self.regime}")


def _check_trainable(loss: str) -> None:
    """The "trained" regime needs a loss with a floor (``Loss.bounded_below``): on nll, -z[y] of
    an MLP's free outputs, gradient descent runs the weights to infinity instead of fitting."""
    if not get_loss(loss).bounded_below:
        raise ValueError(
            f"regime='trained' with loss={loss!r}: J has no floor on an MLP's outputs (no LogSoftmax before it), "
            "so training diverges; expected regime 'plain' or 'boundary'"
        )


def _train(net: MLP, X: Tensor, y: Tensor) -> None:
    """The "trained" regime: gradient descent with refbp's own gradients, in place."""
    lr = TRAIN_LEARNING_RATE
    J = float(net.loss(net.forward(X), y))
    for _ in range(TRAIN_STEPS):
        grads = net.backward(net.forward(X), y)
        old = [(layer.W, layer.b) for layer in net.layers]
        for i, layer in enumerate(net.layers, start=1):
            layer.params["W"] = layer.W - lr * grads.W(i)  # W(i) <- W(i) - lr dJ/dW(i)
            layer.params["b"] = layer.b - lr * grads.b(i)  # b(i) <- b(i) - lr dJ/db(i)
        J_new = float(net.loss(net.forward(X), y))
        if not J_new <= J:  # worse (or not finite): undo the step and take smaller ones
            for layer, (W, b) in zip(net.layers, old, strict=True):
                layer.params["W"], layer.params["b"] = W, b
            lr *= 0.5
        else:
            J = J_new


def _move_to_boundaries(net: MLP, X: Tensor) -> None:
    """The "boundary" regime: for each layer with a piecewise activation, shift b(i)[0] so that
    z(i)[0, 0] sits BOUNDARY_OFFSET above the activation's first boundary."""
    for i, layer in enumerate(net.layers, start=1):
        pieces = layer.activation.pieces
        if pieces is None:
            continue
        z = net.forward(X).z[i]
        assert z is not None
        shift = pieces.boundaries[0] + BOUNDARY_OFFSET - float(z[0, 0])
        b = layer.b.clone()
        b[0] += shift
        layer.params["b"] = b


# ---- checking a spec that came from outside (CaseSpec.from_dict) -------------------------
MAX_LAYERS = 1_000
"""Most layers a spec may have. Every layer is a step of Python in the forward pass, the
backward pass and each finite-difference run: 1,000 tanh layers of width 3 check in about 20 s
on a 2-core machine, while the sweep draws at most 4 and a million would run for days before
failing. Deeper networks can still be built with MLP directly."""

PARAMETER_COPIES = 5
"""float64 copies of the parameters a check holds at once: as drawn, in the network, their
gradients by hand, autograd's copy and autograd's gradients."""

ACTIVATION_COPIES = 8
"""float64 copies of the activations (N x sum of d_i) a check holds at once: z and a, and
their gradients dJ/dz and dJ/da, once by hand and once in autograd's graph."""

DTYPES = ("float64", "float32", "float16", "bfloat16")
"""The dtypes a case can be built in (float16 and bfloat16 are meant for CUDA)."""

_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def check_spec_keys(data: object, *, allowed: set[str], required: tuple[str, ...], what: str = "case spec") -> None:
    """A spec from outside is a dict with every ``required`` key and no key outside ``allowed``."""
    if not isinstance(data, dict):
        raise TypeError(f"a {what} must be a dict (a JSON object), got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"unknown keys {unknown} in the {what}; expected some of {sorted(allowed)}")
    for key in required:
        if key not in data:
            raise ValueError(f"the {what} needs {key!r}; it has {sorted(data)}")


def check_dims(value: object, name: str = "dims") -> tuple[int, ...]:
    """[d_0, ..., d_L]: a list of 2 to MAX_LAYERS + 1 ints >= 1 (the length is checked first,
    so a million-layer list is refused without looking at its entries)."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name}={value!r} must be a list of layer sizes [d_0, ..., d_L], got {type(value).__name__}")
    if not 2 <= len(value) <= MAX_LAYERS + 1:
        raise ValueError(
            f"{name} lists {len(value)} sizes ({len(value) - 1} layers); expected 2 to {MAX_LAYERS + 1} sizes "
            f"(1 to MAX_LAYERS={MAX_LAYERS} layers)"
        )
    return tuple(check_int(d, f"{name}[{k}]", minimum=1) for k, d in enumerate(value))


def check_network_fits(dims: tuple[int, ...], batch: int, what: str) -> None:
    """Refuse, before allocating, a network and batch whose check cannot fit in memory: a lower
    bound of what it holds, PARAMETER_COPIES x the parameters and ACTIVATION_COPIES x the
    activations, in float64."""
    parameters = sum(d_out * (d_in + 1) for d_in, d_out in itertools.pairwise(dims))
    activations = batch * sum(dims)
    nbytes = 8 * (PARAMETER_COPIES * parameters + ACTIVATION_COPIES * activations)
    check_fits_in_memory(nbytes, f"{what} (dims={_short(dims)}, batch={batch})")


def _short(dims: tuple[int, ...]) -> str:
    return str(list(dims)) if len(dims) <= 8 else f"[{', '.join(map(str, dims[:4]))}, ..., {dims[-1]}]"


def _check_names(value: object, name: str, *, count: int) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{name}={value!r} must be a list of names (str), one per layer")
    if len(value) != count:
        raise ValueError(f"{name} has {len(value)} names but dims has {count} layers; expected one name per layer")
    return tuple(value)


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {', '.join(choices)}")
    return value


def check_device(value: object) -> str:
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise ValueError(f"device={value!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:K'")
    return value


def check_number(value: object, name: str, *, positive: bool, signed: bool = False) -> float:
    """A finite real number (int or float, not a bool or a string), > 0 or >= 0 (any sign with
    ``signed``)."""
    expected = "a finite number" if signed else f"a finite number {'> 0' if positive else '>= 0'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}={value!r} must be {expected}, got {type(value).__name__}")
    number = float(value) if isinstance(value, float) or abs(value) < 2**1023 else math.inf
    if not math.isfinite(number) or (not signed and (number < 0 or (positive and number == 0))):
        raise ValueError(f"{name}={value!r} is out of range; expected {expected}")
    return number


NetT = TypeVar("NetT", bound=Network)


@dataclass
class Case(Generic[NetT]):
    """A network and the point (X, y) where its gradients are checked.

    ``spec`` is what built it: a CaseSpec (an MLP: Case[MLP]), a StackSpec (refbp.verify.stacks:
    Case[Network]) or any other description with ``build()``, ``to_json()`` and ``command()``."""

    spec: Any
    net: NetT
    X: Tensor  # (N, d_0), or int64 token indices
    y: Tensor  # (N, d_L) values or (N,) class indices


class _Distance(Tap):
    """Records the smallest distance of any input of a piecewise function to its boundaries."""

    def __init__(self) -> None:
        self.distance = float("inf")

    def piecewise(self, t: Tensor, pieces: Pieces) -> None:
        self.distance = min(self.distance, pieces.distance(t))


def kink_distance(case: Case[Any]) -> float:
    """The smallest distance of an input of a piecewise activation (relu's 0, softplus's
    threshold, ...) to a boundary, over the whole network at the case's point (float64, by
    the network's oracle); inf if there is none. The loss's own pieces (bce's clamps) are not
    counted: they are far from any point a sigmoid output reaches in float64 short of 36."""
    net = case.net
    tap = _Distance()
    X = case.X.detach().cpu()
    X = X.to(torch.float64) if X.is_floating_point() else X
    noise = net.forward(case.X, update_stats=False).noise
    with torch.no_grad():
        params = net.oracle_params(dtype=torch.float64, device="cpu")
        noise64 = {path: mask.cpu() for path, mask in noise.items()}
        net.torch_forward(X, Params(params, net.ties), noise64, tap)
    return tap.distance
