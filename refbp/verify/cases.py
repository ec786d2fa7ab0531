"""A test case: a network together with the point (X, y) at which to check its gradients.

Everything is drawn from one integer seed on the CPU in float64 and then converted, so a
case is reproducible from its description alone on any device and in any dtype.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from ..nn.activations import get_activation
from ..nn.layer import Params, Tap
from ..nn.losses import get_loss
from ..nn.mlp import MLP
from ..nn.network import Network, resolve_device
from ..nn.pieces import Pieces

__all__ = ["KINK_MARGIN", "Case", "CaseSpec", "kink_distance"]

KINK_MARGIN = 1e-4
"""Pre-activations of relu/leaky_relu layers closer than this to 0 put a case "on a kink".
Finite-difference steps move z by about FD_STEP * |a| ~ 1e-5, so 1e-4 keeps central differences
on one side of every kink; the harness still detects and excludes any crossing that happens."""


@dataclass(frozen=True)
class CaseSpec:
    """What defines a case; ``build()`` makes the tensors. JSON-friendly, so a failing case
    can be written down and rebuilt exactly."""

    dims: tuple[int, ...]
    activations: tuple[str, ...]
    loss: str
    seed: int
    dtype: str = "float64"
    device: str = "cpu"
    batch: int = 4
    weight_decay: float = 0.0
    weight_scale: float = 1.0

    def build(self) -> Case:
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
        net = net64.to(dtype=dtype, device=device)
        X = X.to(dtype=dtype, device=device)
        y = y.to(dtype=dtype, device=device) if y.is_floating_point() else y.to(device)
        return Case(spec=self, net=net, X=X, y=y)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseSpec:
        """Build from a dict such as ``refbp check --spec`` reads; unknown keys are refused."""
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown keys {unknown} in the case spec; expected some of {sorted(allowed)}")
        for key in ("dims", "activations", "loss"):
            if key not in data:
                raise ValueError(f"the case spec needs {key!r}; it has {sorted(data)}")
        spec = cls(**{**data, "dims": tuple(data["dims"]), "activations": tuple(data["activations"]),
                      "seed": int(data.get("seed", 0))})  # fmt: skip
        for k, name in enumerate(spec.activations):
            get_activation(name, argument=f"activations[{k}]")
        get_loss(spec.loss)
        if spec.dtype not in ("float64", "float32", "float16", "bfloat16"):
            raise ValueError(f"dtype={spec.dtype!r}; expected float64, float32, float16 or bfloat16")
        if not isinstance(spec.batch, int) or spec.batch < 1:
            raise ValueError(f"batch={spec.batch!r}; expected an int >= 1")
        return spec

    def command(self) -> str:
        """The shell command that checks exactly this case."""
        return f"refbp check --case '{self.to_json()}'"


@dataclass
class Case:
    """A network and the point (X, y) where its gradients are checked.

    ``spec`` is what built it: a CaseSpec (an MLP), a StackSpec (refbp.verify.stacks) or any
    other description with ``build()``, ``to_json()`` and ``command()``."""

    spec: Any
    net: Network
    X: Tensor  # (N, d_0), or int64 token indices
    y: Tensor  # (N, d_L) values or (N,) class indices


class _Distance(Tap):
    """Records the smallest distance of any input of a piecewise function to its boundaries."""

    def __init__(self) -> None:
        self.distance = float("inf")

    def piecewise(self, t: Tensor, pieces: Pieces) -> None:
        self.distance = min(self.distance, pieces.distance(t))


def kink_distance(case: Case) -> float:
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
