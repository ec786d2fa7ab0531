"""A catalogue of classic backprop bugs: the wrong line people really write, beside the right one.

The correct backward pass (refbp.backward) is split here into the six lines a bug can get
wrong, one ``Steps`` field each, numbered as in the equations:

    (4)  output:     dJ/da(L)   = dloss/dy_hat                          (N, d_L)
    (5)  dz:         dJ/dz(i)   = dJ/da(i) o f_i'(z(i))                 (N, d_i)
    (8)  da_prev:    dJ/da(i-1) = dJ/dz(i) W(i)                         (N, d_{i-1})
    (6)  dW_data:    dJ/dz(i)^T a(i-1);  dW: data term + lambda W(i)    (d_i, d_{i-1})
    (7)  db:         dJ/db(i)   = dJ/dz(i)^T 1                          (d_i,)
         param_layers: the layers whose dJ/dW(i), dJ/db(i) are written

Every ``Bug`` replaces one (rarely two) of them with a wrong line, so each entry reads as
"this line instead of that one". Entries marked ``equivalent`` compute the same numbers as the
right line by a different route: no checker can tell them apart, and none should.
Nothing here uses autograd: the buggy passes are hand-written, like the ones they imitate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from hypothesis import strategies as st
from torch import Tensor

from ..nn.activations import ACTIVATIONS, get_activation
from ..nn.losses import LOSSES
from ..nn.mlp import MLP, ForwardCache
from ..strategies import specs
from ..verify.cases import Case, CaseSpec

__all__ = ["BUGS", "CORRECT", "Applies", "Bug", "Steps", "backward_order", "backward_with", "get_bug"]

LayerStep = Callable[[MLP, ForwardCache, int, Tensor], Tensor]
"""(net, cache, i, incoming gradient) -> one of layer i's gradients."""

WEIGHT_DECAY = 0.1
"""lambda used for entries that need weight decay: large enough that lambda W(i) is a sizeable
part of dJ/dW(i), as in the drawn cases of refbp.strategies."""


# ---- the right lines -------------------------------------------------------------------
def _z(cache: ForwardCache, i: int) -> Tensor:
    z_i = cache.z[i]
    if z_i is None:
        raise ValueError(f"cache.z[{i}] is None: run net.forward(X) with keep_z=True for the bug catalogue")
    return z_i


def _output(net: MLP, cache: ForwardCache, y: Tensor) -> Tensor:
    return net.loss_fn.gradient(cache.y_hat, y)  # (4) dJ/da(L) = dloss/dy_hat   (N, d_L)


def _dz(net: MLP, cache: ForwardCache, i: int, dJ_da_i: Tensor) -> Tensor:
    act = get_activation(net.activations[i - 1])
    t = cache.a[i] if act.derivative_of == "a" else _z(cache, i)
    return dJ_da_i * act.derivative(t)  # (5) dJ/dz(i) = dJ/da(i) o f'(z(i))   (N, d_i)


def _da_prev(net: MLP, cache: ForwardCache, i: int, dJ_dz_i: Tensor) -> Tensor:
    return dJ_dz_i @ net.weights[i - 1]  # (8) (N, d_i) @ (d_i, d_{i-1}) = (N, d_{i-1})


def _dW_data(net: MLP, cache: ForwardCache, i: int, dJ_dz_i: Tensor) -> Tensor:
    return dJ_dz_i.T @ cache.a[i - 1]  # (6) data term (d_i, N) @ (N, d_{i-1}) = (d_i, d_{i-1})


def _dW(data: Tensor, W: Tensor, lam: float) -> Tensor:
    return data + lam * W if lam else data  # (6) dJ/dW(i) = data term + lambda W(i)   (d_i, d_{i-1})


def _db(net: MLP, cache: ForwardCache, i: int, dJ_dz_i: Tensor) -> Tensor:
    return dJ_dz_i.sum(dim=0)  # (7) dJ/db(i) = sum over the batch   (d_i,)


def _all_layers(L: int) -> range:
    return range(1, L + 1)


@dataclass(frozen=True)
class Steps:
    """The backward pass as replaceable lines; every field defaults to the right line.

    Attributes:
        output: (net, cache, y) -> dJ/da(L) (N, d_L), eq. (4).
        dz: layer i's dJ/da(i) -> dJ/dz(i) (N, d_i), eq. (5).
        da_prev: layer i's dJ/dz(i) -> dJ/da(i-1) (N, d_{i-1}), eq. (8); at i = 1, dJ/dX (9).
        dW_data: layer i's dJ/dz(i) -> the data term of dJ/dW(i) (d_i, d_{i-1}), eq. (6).
        dW: (data term, W(i), lambda) -> dJ/dW(i), eq. (6).
        db: layer i's dJ/dz(i) -> dJ/db(i) (d_i,), eq. (7).
        param_layers: L -> the layers whose dJ/dW(i), dJ/db(i) are written; the others keep
            the zeros they start from.
    """

    output: Callable[[MLP, ForwardCache, Tensor], Tensor] = _output
    dz: LayerStep = _dz
    da_prev: LayerStep = _da_prev
    dW_data: LayerStep = _dW_data
    dW: Callable[[Tensor, Tensor, float], Tensor] = _dW
    db: LayerStep = _db
    param_layers: Callable[[int], range] = _all_layers


CORRECT = Steps()
"""The right lines: ``backward_with(CORRECT, ...)`` equals refbp.backward's gradients."""


def backward_with(steps: Steps, net: MLP, cache: ForwardCache, y: Tensor) -> dict[str, Tensor]:
    """Run eqs. (4)-(9) with the given lines; returns {"W1", "b1", "z1", "a1", ..., "X"} as
    ``Gradients.as_dict()`` does."""
    y = net.check_targets(y, cache)
    L = net.L
    dJ_da: dict[int, Tensor] = {L: steps.output(net, cache, y)}  # (4)   (N, d_L)
    dJ_dz: dict[int, Tensor] = {}
    for i in range(L, 0, -1):
        dJ_dz[i] = steps.dz(net, cache, i, dJ_da[i])  # (5)   (N, d_i)
        dJ_da[i - 1] = steps.da_prev(net, cache, i, dJ_dz[i])  # (8)   (N, d_{i-1})
    dJ_dW = {i: torch.zeros_like(W) for i, W in enumerate(net.weights, start=1)}  # (d_i, d_{i-1})
    dJ_db = {i: torch.zeros_like(b) for i, b in enumerate(net.biases, start=1)}  # (d_i,)
    for i in steps.param_layers(L):
        data = steps.dW_data(net, cache, i, dJ_dz[i])
        dJ_dW[i] = steps.dW(data, net.weights[i - 1], net.weight_decay)  # (6)
        dJ_db[i] = steps.db(net, cache, i, dJ_dz[i])  # (7)
    out: dict[str, Tensor] = {}
    for i in range(1, L + 1):
        out.update({f"W{i}": dJ_dW[i], f"b{i}": dJ_db[i], f"z{i}": dJ_dz[i], f"a{i}": dJ_da[i]})
    out["X"] = dJ_da[0]  # (9) dJ/dX = dJ/da(0)   (N, d_0)
    return out


def backward_order(L: int) -> list[str]:
    """The keys in the order the backward pass computes them: a_L, z_L, W_L, b_L, ..., X."""
    return [f"{key}{i}" for i in range(L, 0, -1) for key in ("a", "z", "W", "b")] + ["X"]


# ---- where an entry applies ------------------------------------------------------------
_SMOOTH = ("tanh", "sigmoid", "softplus", "gelu", "silu", "elu")


@dataclass(frozen=True)
class Applies:
    """The networks on which an entry's wrong line runs and can matter.

    Attributes:
        losses: losses to draw from.
        activations: activations to draw from (the loss may still force the output's).
        min_depth: fewest layers L.
        weight_decay: True: lambda > 0 (set to WEIGHT_DECAY); False: lambda = 0; None: either.
        equal_widths: every d_i equal (where a wrong line would otherwise not even run).
        layer_activation: some layer must use this activation.
        where: the same in words, for the report.
    """

    losses: tuple[str, ...] = tuple(LOSSES)
    activations: tuple[str, ...] = tuple(ACTIVATIONS)
    min_depth: int = 1
    weight_decay: bool | None = None
    equal_widths: bool = False
    layer_activation: str | None = None
    where: str = "any network"

    def admits(self, spec: CaseSpec) -> bool:
        """True when ``spec`` is a network this entry applies to."""
        return (
            spec.loss in self.losses
            and len(spec.activations) >= self.min_depth
            and (self.weight_decay is None or (spec.weight_decay > 0) == self.weight_decay)
            and (not self.equal_widths or len(set(spec.dims)) == 1)
            and (self.layer_activation is None or self.layer_activation in spec.activations)
        )

    def specs(self, *, max_depth: int = 3, max_width: int = 4, max_batch: int = 4) -> st.SearchStrategy[CaseSpec]:
        """Float64 CaseSpecs this entry applies to, built on refbp.strategies.specs so that
        hypothesis shrinks them to the smallest such network."""
        drawn = specs(
            max_depth=max(max_depth, self.min_depth), max_width=max_width, max_batch=max_batch,
            activations=self.activations, losses=self.losses, dtypes=("float64",),
            weight_decay=self.weight_decay is None,
        )  # fmt: skip
        return drawn.map(self._fit).filter(self.admits)

    def _fit(self, spec: CaseSpec) -> CaseSpec:
        if self.weight_decay:
            spec = replace(spec, weight_decay=WEIGHT_DECAY)
        if self.equal_widths:
            width = max(spec.dims[0], 2 if spec.loss == "cross_entropy" else 1)
            spec = replace(spec, dims=(width,) * len(spec.dims))
        return spec


@dataclass(frozen=True)
class Bug:
    """One catalogue entry: a wrong line, the right line, and why the first is wrong.

    Attributes:
        name: a short identifier (``refbp bugs --only NAME``).
        title: what the bug is, in a few words.
        equation: the number of the equation the wrong line computes.
        wrong: the wrong line, as people write it.
        right: the right line.
        why: one or two sentences on why the wrong line is wrong (or, for an equivalent
            entry, why it is not).
        equivalent: True when the "wrong" line computes the same gradients (a mutant that no
            checker can or should catch).
        applies: the networks it applies to.
        steps: the backward pass with the wrong line in place.
    """

    name: str
    title: str
    equation: int
    wrong: str
    right: str
    why: str
    equivalent: bool = False
    applies: Applies = field(default_factory=Applies)
    steps: Steps = CORRECT

    def backward(self, net: MLP, cache: ForwardCache, y: Tensor) -> dict[str, Tensor]:
        """The buggy gradients, {"W1", "b1", "z1", "a1", ..., "X"} like Gradients.as_dict()."""
        return backward_with(self.steps, net, cache, y)

    # ---- what every catalogue entry offers (refbp.apps.bugs_cli runs any of them) ------------
    @property
    def where(self) -> str:
        """The networks it applies to, in words."""
        return self.applies.where

    def specs(self) -> st.SearchStrategy[CaseSpec]:
        """Small float64 networks it applies to, shrinkable by hypothesis."""
        return self.applies.specs()

    def gradients(self, case: Case) -> tuple[dict[str, Tensor], dict[tuple[int, ...], Tensor]]:
        """The buggy gradients at the case's point, and the random draws they used (none: an MLP)."""
        assert isinstance(case.net, MLP)
        return self.backward(case.net, case.net.forward(case.X), case.y), {}


# ---- the wrong lines -------------------------------------------------------------------
def _sign_slip(net: MLP, cache: ForwardCache, y: Tensor) -> Tensor:
    return y - cache.y_hat  # the seed's dJ/dy_hat = y - y_hat


def _half_sse_doubled(net: MLP, cache: ForwardCache, y: Tensor) -> Tensor:
    return 2.0 * (cache.y_hat - y)  # the 2 of the square kept, the 1/2 of J forgotten


def _mse_per_row(net: MLP, cache: ForwardCache, y: Tensor) -> Tensor:
    return 2.0 * (cache.y_hat - y) / cache.y_hat.shape[1]  # divided by d_L, not N d_L


def _softmax_factor_again(net: MLP, cache: ForwardCache, y: Tensor) -> Tensor:
    s = torch.softmax(cache.y_hat, dim=1)  # (N, C)
    return _output(net, cache, y) * s * (1.0 - s)  # an extra (diagonal) softmax derivative


def _softmax_via_logsumexp(net: MLP, cache: ForwardCache, y: Tensor) -> Tensor:
    z = cache.y_hat  # (N, C) logits
    s = torch.exp(z - torch.logsumexp(z, dim=1, keepdim=True))  # softmax(z), another route
    s[torch.arange(z.shape[0], device=z.device), y] -= 1.0
    return s / z.shape[0]


def _override_dz(activation: str, f_prime: Callable[[Tensor, Tensor], Tensor]) -> LayerStep:
    """Eq. (5) with f'(z(i)) = f_prime(z(i), a(i)) in every layer that uses ``activation``."""

    def dz(net: MLP, cache: ForwardCache, i: int, dJ_da_i: Tensor) -> Tensor:
        if net.activations[i - 1] != activation:
            return _dz(net, cache, i, dJ_da_i)
        return dJ_da_i * f_prime(_z(cache, i), cache.a[i])

    return dz


def _sigmoid_prime_recomputed(z: Tensor, a: Tensor) -> Tensor:
    s = torch.sigmoid(z)  # a again, recomputed from z
    return s * (1.0 - s)


def _hidden_dz_forgotten(net: MLP, cache: ForwardCache, i: int, dJ_da_i: Tensor) -> Tensor:
    if i == net.L - 1:
        return dJ_da_i  # the last hidden layer treated as linear
    return _dz(net, cache, i, dJ_da_i)


def _dX_without_W(net: MLP, cache: ForwardCache, i: int, dJ_dz_i: Tensor) -> Tensor:
    return dJ_dz_i if i == 1 else _da_prev(net, cache, i, dJ_dz_i)


def _da_prev_without_W(net: MLP, cache: ForwardCache, i: int, dJ_dz_i: Tensor) -> Tensor:
    return dJ_dz_i


def _dW_no_transpose(net: MLP, cache: ForwardCache, i: int, dJ_dz_i: Tensor) -> Tensor:
    return cache.a[i - 1].T @ dJ_dz_i  # (d_{i-1}, d_i): dJ/dW(i)^T


def _dW_reshaped(net: MLP, cache: ForwardCache, i: int, dJ_dz_i: Tensor) -> Tensor:
    return (cache.a[i - 1].T @ dJ_dz_i).reshape(net.weights[i - 1].shape)


def _dW_transpose_of_product(net: MLP, cache: ForwardCache, i: int, dJ_dz_i: Tensor) -> Tensor:
    return (cache.a[i - 1].T @ dJ_dz_i).T  # (A^T B)^T = B^T A


def _dW_from_output(net: MLP, cache: ForwardCache, i: int, dJ_dz_i: Tensor) -> Tensor:
    return dJ_dz_i.T @ cache.a[i]  # a(i), the layer's output, not its input a(i-1)


def _decay_overwrites(data: Tensor, W: Tensor, lam: float) -> Tensor:
    return lam * W  # assigned after the data term instead of added to it


def _db_mean(net: MLP, cache: ForwardCache, i: int, dJ_dz_i: Tensor) -> Tensor:
    return dJ_dz_i.mean(dim=0)


def _db_decayed(net: MLP, cache: ForwardCache, i: int, dJ_dz_i: Tensor) -> Tensor:
    return dJ_dz_i.sum(dim=0) + net.weight_decay * net.biases[i - 1]


def _db_ones_matmul(net: MLP, cache: ForwardCache, i: int, dJ_dz_i: Tensor) -> Tensor:
    return torch.ones(dJ_dz_i.shape[0], dtype=dJ_dz_i.dtype, device=dJ_dz_i.device) @ dJ_dz_i  # 1^T dJ/dz(i)


def _skip_first(L: int) -> range:
    return range(2, L + 1)


def _skip_last(L: int) -> range:
    return range(1, L)


_NO_DECAY = "lambda = 0 (with weight decay the wrong shape meets + lambda W(i) and the code crashes)"

BUGS: tuple[Bug, ...] = (
    Bug(
        "seed_sign_slip", "the seed's sign: dJ/dy_hat = y - y_hat", 4,
        "dJ_da[L] = y - y_hat", "dJ_da[L] = y_hat - y",
        "J = 1/2 ||y_hat - y||^2 grows with y_hat - y, so y - y_hat is minus the gradient: every "
        "gradient flips sign and gradient descent climbs the loss.",
        steps=Steps(output=_sign_slip), applies=Applies(losses=("half_sse",), where="loss half_sse (the seed's)"),
    ),
    Bug(
        "dW_missing_transpose", "missing transpose in dJ/dW", 6,
        "dJ_dW = a[i-1].T @ dJ_dz", "dJ_dW = dJ_dz.T @ a[i-1]",
        "This is dJ/dW(i)^T, shape (d_{i-1}, d_i): a shape error on a non-square layer; a square "
        "layer hides the shape error and only the (transposed) values are wrong; a 1x1 layer hides it all.",
        steps=Steps(dW_data=_dW_no_transpose), applies=Applies(weight_decay=False, where=_NO_DECAY),
    ),
    Bug(
        "dW_missing_transpose_square", "missing transpose in dJ/dW, square layers", 6,
        "dJ_dW = a[i-1].T @ dJ_dz", "dJ_dW = dJ_dz.T @ a[i-1]",
        "The same slip where every layer is square: no shape error to give it away, so only the values "
        "can, and only when dJ/dW(i) is not symmetric (a 1x1 layer, or a symmetric product, hides it).",
        steps=Steps(dW_data=_dW_no_transpose), applies=Applies(equal_widths=True, where="all widths equal"),
    ),
    Bug(
        "dW_transpose_reshaped", "missing transpose, 'fixed' with reshape", 6,
        "dJ_dW = (a[i-1].T @ dJ_dz).reshape(W.shape)", "dJ_dW = dJ_dz.T @ a[i-1]",
        "Reshaping is not transposing: the shape error goes away but the numbers land in the wrong "
        "places. Only a layer with d_i > 1 and d_{i-1} > 1 shows it (for a vector the two coincide).",
        steps=Steps(dW_data=_dW_reshaped),
    ),
    Bug(
        "dW_from_a_i", "dJ/dW from the wrong cache entry, a(i)", 6,
        "dJ_dW = dJ_dz.T @ a[i]", "dJ_dW = dJ_dz.T @ a[i-1]",
        "W(i) multiplies a(i-1), the layer's input; a(i) is its output. Off by one in the cache: a "
        "(d_i, d_i) shape error unless the layer is square, wrong values always.",
        steps=Steps(dW_data=_dW_from_output), applies=Applies(weight_decay=False, where=_NO_DECAY),
    ),
    Bug(
        "db_batch_mean", "bias gradient averaged over the batch", 7,
        "dJ_db = dJ_dz.mean(dim=0)", "dJ_db = dJ_dz.sum(dim=0)",
        "b(i) is added to every row, so its gradient is the sum of the rows' gradients; any 1/N "
        "belongs to the loss and is already in dJ/dz. The mean is N times too small (right when N = 1).",
        steps=Steps(db=_db_mean),
    ),
    Bug(
        "sigmoid_derivative_of_z", "sigmoid derivative of z: z(1 - z)", 5,
        "f_prime = z * (1 - z)", "f_prime = a * (1 - a)",
        "sigma'(z) = sigma(z)(1 - sigma(z)) = a(1 - a): the short formula takes the activation, not "
        "the pre-activation. A helper sigmoid_prime(x) = x * (1 - x) invites passing z.",
        steps=Steps(dz=_override_dz("sigmoid", lambda z, a: z * (1.0 - z))),
        applies=Applies(activations=("sigmoid", "tanh", "relu"), layer_activation="sigmoid",
                        where="a sigmoid layer"),
    ),
    Bug(
        "relu_derivative_a_geq_0", "relu derivative as a >= 0", 5,
        "f_prime = (a >= 0)", "f_prime = (a > 0)",
        "a = max(z, 0) is never negative, so a >= 0 is always true: relu's derivative becomes 1 and "
        "dead units pass gradient. (z >= 0 differs only at z = 0, see the equivalent entries.)",
        steps=Steps(dz=_override_dz("relu", lambda z, a: (a >= 0).to(a.dtype))),
        applies=Applies(activations=("relu", "tanh", "identity"), layer_activation="relu", where="a relu layer"),
    ),
    Bug(
        "hidden_derivative_forgotten", "activation derivative forgotten in a hidden layer", 5,
        "dJ_dz[L-1] = dJ_da[L-1]", "dJ_dz[L-1] = dJ_da[L-1] * f_prime(z[L-1])",
        "Treats the last hidden layer as linear: right only where f' = 1, so every gradient from "
        "that layer down is wrong.",
        steps=Steps(dz=_hidden_dz_forgotten),
        applies=Applies(activations=(*_SMOOTH, "relu"), min_depth=2,
                        where="L >= 2, hidden activation not the identity"),
    ),
    Bug(
        "half_sse_gradient_doubled", "half_sse gradient without the 1/2", 4,
        "dJ_da[L] = 2 * (y_hat - y)", "dJ_da[L] = y_hat - y",
        "The 1/2 in J = 1/2 ||y_hat - y||^2 is there to cancel the 2 of the square; keeping both "
        "the 1/2 in J and the 2 in the gradient doubles every gradient.",
        steps=Steps(output=_half_sse_doubled), applies=Applies(losses=("half_sse",), where="loss half_sse"),
    ),
    Bug(
        "mse_not_divided_by_batch", "mean loss not divided by the batch size", 4,
        "dJ_da[L] = 2 * (y_hat - y) / d_L", "dJ_da[L] = 2 * (y_hat - y) / (N * d_L)",
        "mse averages over all N d_L entries; dividing by d_L alone makes every gradient N times "
        "too large (right when N = 1).",
        steps=Steps(output=_mse_per_row), applies=Applies(losses=("mse",), where="loss mse"),
    ),
    Bug(
        "softmax_ce_extra_factor", "softmax + cross-entropy with an extra softmax derivative", 4,
        "dJ_dz[L] = (softmax(z) - onehot(y)) / N * s * (1 - s)", "dJ_dz[L] = (softmax(z) - onehot(y)) / N",
        "softmax(z) - onehot(y) is already the gradient with respect to the logits, the softmax "
        "Jacobian included; multiplying by s(1 - s) applies a second (and diagonal-only) derivative.",
        steps=Steps(output=_softmax_factor_again),
        applies=Applies(losses=("cross_entropy",), where="loss cross_entropy"),
    ),
    Bug(
        "dX_without_W", "dJ/dX formed without W(1)", 8,
        "dJ_dX = dJ_dz[1]", "dJ_dX = dJ_dz[1] @ W[1]",
        "dz(1)/dX = W(1): leaving it out hands back dJ/dz(1), shape (N, d_1): a shape error unless "
        "d_1 = d_0, wrong values even then.",
        steps=Steps(da_prev=_dX_without_W),
    ),
    Bug(
        "da_prev_without_W", "dJ/da(i-1) formed without W(i)", 8,
        "dJ_da[i-1] = dJ_dz[i]", "dJ_da[i-1] = dJ_dz[i] @ W[i]",
        "Every hand-off skips the layer's weights. The shapes only fit when all widths are equal "
        "(otherwise the next line fails, or broadcasts); then every gradient below the output is wrong.",
        steps=Steps(da_prev=_da_prev_without_W),
        applies=Applies(equal_widths=True, where="all widths equal (else it crashes)"),
    ),
    Bug(
        "weight_decay_overwrites_data", "gradient overwritten, not accumulated: weight decay", 6,
        "dJ_dW = dJ_dz.T @ a[i-1];  dJ_dW = lam * W", "dJ_dW = dJ_dz.T @ a[i-1] + lam * W",
        "W(i) appears in J twice, in the data term and in the penalty, so its gradient is the sum of "
        "both; assigning the penalty's part overwrites the data term's.",
        steps=Steps(dW=_decay_overwrites), applies=Applies(weight_decay=True, where="lambda > 0"),
    ),
    Bug(
        "bias_decayed", "weight decay applied to the biases", 7,
        "dJ_db = dJ_dz.sum(dim=0) + lam * b", "dJ_db = dJ_dz.sum(dim=0)",
        "J (eq. 3) penalises the weights only; lam * b is the gradient of a penalty that is not in J.",
        steps=Steps(db=_db_decayed), applies=Applies(weight_decay=True, where="lambda > 0"),
    ),
    Bug(
        "first_layer_skipped", "layer loop off by one: first layer skipped", 6,
        "for i in range(2, L + 1):", "for i in range(1, L + 1):",
        "One-based layers over a range that should start at 1: dJ/dW(1) and dJ/db(1) keep the zeros "
        "they were initialised with.",
        steps=Steps(param_layers=_skip_first),
    ),
    Bug(
        "last_layer_skipped", "layer loop off by one: last layer skipped", 6,
        "for i in range(1, L):", "for i in range(1, L + 1):",
        "range's end is exclusive: the output layer's dJ/dW(L) and dJ/db(L) are never written and "
        "stay zero.",
        steps=Steps(param_layers=_skip_last),
    ),
    # ---- equivalent mutants: the same numbers by another route --------------------------
    Bug(
        "relu_derivative_from_z", "relu' from z > 0 instead of a > 0", 5,
        "f_prime = (z > 0)", "f_prime = (a > 0)",
        "a = max(z, 0) is positive exactly when z is: the same mask, bit for bit. Which cache entry "
        "to read is a memory choice, not a correctness one.",
        equivalent=True, steps=Steps(dz=_override_dz("relu", lambda z, a: (z > 0).to(z.dtype))),
        applies=Applies(activations=("relu", "tanh", "identity"), layer_activation="relu", where="a relu layer"),
    ),
    Bug(
        "relu_derivative_one_at_zero", "relu'(0) = 1: z >= 0", 5,
        "f_prime = (z >= 0)", "f_prime = (a > 0)",
        "Differs only where z is exactly 0, where relu has no derivative: 0 and 1 are both valid "
        "subgradients (torch picks 0). Finite differences cannot see a slope at a kink, and the "
        "harness keeps cases KINK_MARGIN away from it; there the two masks are identical.",
        equivalent=True, steps=Steps(dz=_override_dz("relu", lambda z, a: (z >= 0).to(z.dtype))),
        applies=Applies(activations=("relu", "tanh", "identity"), layer_activation="relu", where="a relu layer"),
    ),
    Bug(
        "sigmoid_derivative_recomputed", "sigmoid' recomputed from z", 5,
        "s = sigmoid(z); f_prime = s * (1 - s)", "f_prime = a * (1 - a)",
        "sigmoid(z) is a: the same number again, to round-off. Recomputing a forward quantity is "
        "a style fault (the cache has it), not a wrong gradient.",
        equivalent=True, steps=Steps(dz=_override_dz("sigmoid", _sigmoid_prime_recomputed)),
        applies=Applies(activations=("sigmoid", "tanh", "relu"), layer_activation="sigmoid",
                        where="a sigmoid layer"),
    ),
    Bug(
        "dW_transpose_of_product", "dJ/dW as (a(i-1)^T dJ/dz(i))^T", 6,
        "dJ_dW = (a[i-1].T @ dJ_dz).T", "dJ_dW = dJ_dz.T @ a[i-1]",
        "(A^T B)^T = B^T A: the same matrix, each entry the same sum of products over the batch.",
        equivalent=True, steps=Steps(dW_data=_dW_transpose_of_product),
    ),
    Bug(
        "db_as_ones_product", "dJ/db as 1^T dJ/dz(i)", 7,
        "dJ_db = torch.ones(N) @ dJ_dz", "dJ_db = dJ_dz.sum(dim=0)",
        "Multiplying by a row of ones is summing over the batch, written as eq. (7) writes it.",
        equivalent=True, steps=Steps(db=_db_ones_matmul),
    ),
    Bug(
        "softmax_via_logsumexp", "softmax as exp(z - logsumexp(z))", 4,
        "s = exp(z - logsumexp(z)); dJ_dz[L] = (s - onehot(y)) / N",
        "dJ_dz[L] = (softmax(z) - onehot(y)) / N",
        "exp(z - logsumexp(z)) is softmax(z), shifted for stability the same way; only round-off differs.",
        equivalent=True, steps=Steps(output=_softmax_via_logsumexp),
        applies=Applies(losses=("cross_entropy",), where="loss cross_entropy"),
    ),
)  # fmt: skip
"""The catalogue: the classic bugs first, then the equivalent mutants."""


def get_bug(name: str) -> Bug:
    """Look up a catalogue entry by name; a clear ValueError lists the names otherwise."""
    for bug in BUGS:
        if bug.name == name:
            return bug
    raise ValueError(f"bug={name!r} is not in the catalogue; expected one of {[b.name for b in BUGS]}")
