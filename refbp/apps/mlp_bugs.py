"""The MLP's classic backprop bugs: the wrong line people really write, beside the right one.

Each entry is the real backward pass with one line wrong, run by the one Network loop
(refbp.nn.stack): the loss's gradient replaced, or Dense layers (refbp.nn.dense) swapped for a
twin, a Dense that shares the layer's parameters and differs in that line only:

    (4)  dJ/da(L)   = dloss/dy_hat                     the loss's gradient replaced
    (5)  dJ/dz(i)   = dJ/da(i) o f_i'(z(i))            a Dense whose activation has a wrong f'
    (6)  dJ/dW(i)   = dJ/dz(i)^T a(i-1) + lambda W(i)  a twin (_OneLineWrong): Dense.backward
    (7)  dJ/db(i)   = dJ/dz(i)^T 1                      runs as it is, then the wrong line's
    (8)  dJ/da(i-1) = dJ/dz(i) W(i)                     result replaces the right one
         the loop over the layers                     a twin in one layer only (i = 1, L - 1, L)

so each entry reads as "this line instead of that one". Entries marked ``equivalent`` compute
the same numbers as the right line by another route: no checker can tell them apart, and none
should. Nothing here uses autograd: the wrong lines are hand-written, like the ones they imitate.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from hypothesis import strategies as st
from torch import Tensor

from ..nn.activations import ACTIVATIONS
from ..nn.dense import Dense
from ..nn.layer import BackwardContext, Layer, LayerGradients
from ..nn.losses import LOSSES, Loss
from ..nn.network import Network
from ..strategies import specs
from ..verify.cases import CaseSpec
from .bug_record import Bug, Rewire, loss_gradient, swap, twin_of

__all__ = ["MLP_BUGS", "WEIGHT_DECAY", "Applies"]

WEIGHT_DECAY = 0.1
"""lambda used for entries that need weight decay: large enough that lambda W(i) is a sizeable
part of dJ/dW(i), as in the drawn cases of refbp.strategies."""


# ---- where an entry applies ------------------------------------------------------------
@dataclass(frozen=True)
class Applies:
    """The MLPs on which an entry's wrong line runs and can matter.

    Attributes:
        losses: losses to draw from.
        activations: activations to draw from (the loss may still force the output's).
        min_depth: fewest layers L.
        weight_decay: True: lambda > 0 (set to WEIGHT_DECAY); False: lambda = 0; None: either.
        equal_widths: every d_i equal (where a wrong line would otherwise not even run).
        layer_activation: some layer must use this activation.
    """

    losses: tuple[str, ...] = tuple(LOSSES)
    activations: tuple[str, ...] = tuple(ACTIVATIONS)
    min_depth: int = 1
    weight_decay: bool | None = None
    equal_widths: bool = False
    layer_activation: str | None = None

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
            width = max(spec.dims[0], 2 if LOSSES[spec.loss].targets == "classes" else 1)
            spec = replace(spec, dims=(width,) * len(spec.dims))
        return spec


_SMOOTH = ("tanh", "sigmoid", "softplus", "gelu", "silu", "elu")
_SIGMOID = Applies(activations=("sigmoid", "tanh", "relu"), layer_activation="sigmoid")
_RELU = Applies(activations=("relu", "tanh", "identity"), layer_activation="relu")
_CROSS_ENTROPY = Applies(losses=("cross_entropy",))
_ANY = "any network"


# ---- which layers have the wrong line ----------------------------------------------------
def _every(twin: type[Dense]) -> Rewire:
    """Every Dense layer swapped for its twin of class ``twin``."""
    return lambda net: swap(net, Dense, twin_of(twin))


def _at(index: int, make: Callable[[Layer], Layer]) -> Rewire:
    """Only ``net.layers[index]`` (0: layer 1, -1: layer L) replaced by ``make(layer)``: the
    wrong line runs in that layer alone."""

    def rewire(net: Network) -> Network:
        layers = list(net.layers)
        layers[index] = make(layers[index])
        return Network(layers, net.loss_fn, weight_decay=net.weight_decay)

    return rewire


# ---- eq. (5): a wrong f' ------------------------------------------------------------------
def _with_derivative(layer: Layer, of: str, f_prime: Callable[[Tensor], Tensor]) -> Dense:
    """The Dense ``layer`` with f'(z(i)) computed by ``f_prime`` from a(i) or z(i) (``of``): the
    same parameters and forward pass; Dense.backward runs unchanged and meets the wrong f' in
    eq. (5), dJ/dz(i) = dJ/da(i) o f'(z(i)), and so in everything computed from dJ/dz(i)."""
    assert isinstance(layer, Dense)
    twin = copy.copy(layer)  # shares W(i), b(i)
    twin.activation = replace(layer.activation, derivative=f_prime, derivative_of=of, chain_in_place=None)
    return twin


def _derivative(activation: str, of: str, f_prime: Callable[[Tensor], Tensor]) -> Rewire:
    """Eq. (5) with f' = ``f_prime`` (of a(i) or z(i)) in every layer that uses ``activation``."""

    def make(layer: Layer) -> Layer:
        assert isinstance(layer, Dense)
        return _with_derivative(layer, of, f_prime) if layer.activation.name == activation else layer

    return lambda net: swap(net, Dense, make)


def _linear(layer: Layer) -> Layer:
    return _with_derivative(layer, "a", torch.ones_like)  # f' = 1: the layer treated as linear


def _sigmoid_prime_recomputed(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)  # a again, recomputed from z
    return s * (1.0 - s)


# ---- eqs. (6)-(8): one result of Dense.backward wrong -----------------------------------------
class _OneLineWrong(Dense):
    """A Dense with one line of eqs. (6)-(8) wrong. Dense.backward runs as it is, keeping
    dJ/dz(i) (eq. 5, right) for the wrong line to read; ``wrong_line`` then writes its result
    over the right one."""

    def backward(
        self, dJ_da: Tensor, x: Tensor, out: Tensor, cache: Tensor | None, ctx: BackwardContext
    ) -> LayerGradients:
        grads = super().backward(dJ_da, x, out, cache, replace(ctx, keep_intermediates=True))
        dJ_dz = grads.intermediates[ctx.key("z")]  # (5) dJ/dz(i)   (N, d_i)
        self.wrong_line(grads, dJ_dz, x, out, ctx)
        if not ctx.keep_intermediates:
            grads.intermediates = {}
        return grads

    @abstractmethod
    def wrong_line(self, grads: LayerGradients, dJ_dz: Tensor, x: Tensor, out: Tensor, ctx: BackwardContext) -> None:
        """Replace one of ``grads`` (dJ/dW(i), dJ/db(i) or dJ/da(i-1)) by the wrong line's;
        x = a(i-1) (N, d_{i-1}), out = a(i) (N, d_i), dJ_dz = dJ/dz(i) (N, d_i)."""


def _decayed(data: Tensor, W: Tensor, ctx: BackwardContext) -> Tensor:
    return data + ctx.weight_decay * W if ctx.weight_decay else data  # (6) data term + lambda W(i)


class _DWNoTranspose(_OneLineWrong):
    def wrong_line(self, grads: LayerGradients, dJ_dz: Tensor, x: Tensor, out: Tensor, ctx: BackwardContext) -> None:
        grads.params["W"] = _decayed(x.T @ dJ_dz, self.W, ctx)  # (d_{i-1}, d_i): dJ/dW(i)^T


class _DWReshaped(_OneLineWrong):
    def wrong_line(self, grads: LayerGradients, dJ_dz: Tensor, x: Tensor, out: Tensor, ctx: BackwardContext) -> None:
        grads.params["W"] = _decayed((x.T @ dJ_dz).reshape(self.W.shape), self.W, ctx)  # not a transpose


class _DWFromOutput(_OneLineWrong):
    def wrong_line(self, grads: LayerGradients, dJ_dz: Tensor, x: Tensor, out: Tensor, ctx: BackwardContext) -> None:
        grads.params["W"] = _decayed(dJ_dz.T @ out, self.W, ctx)  # a(i), the layer's output, not a(i-1)


class _DWTransposeOfProduct(_OneLineWrong):
    def wrong_line(self, grads: LayerGradients, dJ_dz: Tensor, x: Tensor, out: Tensor, ctx: BackwardContext) -> None:
        grads.params["W"] = _decayed((x.T @ dJ_dz).T, self.W, ctx)  # (A^T B)^T = B^T A


class _DecayOverwrites(_OneLineWrong):
    def wrong_line(self, grads: LayerGradients, dJ_dz: Tensor, x: Tensor, out: Tensor, ctx: BackwardContext) -> None:
        grads.params["W"] = ctx.weight_decay * self.W  # assigned after the data term instead of added to it


class _DbMean(_OneLineWrong):
    def wrong_line(self, grads: LayerGradients, dJ_dz: Tensor, x: Tensor, out: Tensor, ctx: BackwardContext) -> None:
        grads.params["b"] = dJ_dz.mean(dim=0)  # (d_i,), N times too small


class _DbDecayed(_OneLineWrong):
    def wrong_line(self, grads: LayerGradients, dJ_dz: Tensor, x: Tensor, out: Tensor, ctx: BackwardContext) -> None:
        grads.params["b"] = dJ_dz.sum(dim=0) + ctx.weight_decay * self.b  # a penalty J does not have


class _DbOnesProduct(_OneLineWrong):
    def wrong_line(self, grads: LayerGradients, dJ_dz: Tensor, x: Tensor, out: Tensor, ctx: BackwardContext) -> None:
        ones = torch.ones(dJ_dz.shape[0], dtype=dJ_dz.dtype, device=dJ_dz.device)  # (N,)
        grads.params["b"] = ones @ dJ_dz  # 1^T dJ/dz(i)   (d_i,)


class _DaPrevWithoutW(_OneLineWrong):
    def wrong_line(self, grads: LayerGradients, dJ_dz: Tensor, x: Tensor, out: Tensor, ctx: BackwardContext) -> None:
        if ctx.need_dx:
            grads.dJ_dx = dJ_dz  # (N, d_i) handed down as dJ/da(i-1): W(i) left out


class _Skipped(_OneLineWrong):
    def wrong_line(self, grads: LayerGradients, dJ_dz: Tensor, x: Tensor, out: Tensor, ctx: BackwardContext) -> None:
        grads.params = {kind: torch.zeros_like(p) for kind, p in self.params.items()}  # never written


# ---- eq. (4): the loss's gradient wrong ------------------------------------------------------
def _sign_slip(loss: Loss, y_hat: Tensor, y: Tensor) -> Tensor:
    return y - y_hat  # the seed's dJ/dy_hat = y - y_hat


def _half_sse_doubled(loss: Loss, y_hat: Tensor, y: Tensor) -> Tensor:
    return 2.0 * (y_hat - y)  # the 2 of the square kept, the 1/2 of J forgotten


def _mse_per_row(loss: Loss, y_hat: Tensor, y: Tensor) -> Tensor:
    return 2.0 * (y_hat - y) / y_hat.shape[1]  # divided by d_L, not N d_L


def _softmax_factor_again(loss: Loss, z: Tensor, y: Tensor) -> Tensor:
    s = torch.softmax(z, dim=1)  # (N, C)
    return loss.gradient(z, y) * s * (1.0 - s)  # an extra (diagonal) softmax derivative


def _softmax_via_logsumexp(loss: Loss, z: Tensor, y: Tensor) -> Tensor:
    s = torch.exp(z - torch.logsumexp(z, dim=1, keepdim=True))  # (N, C) softmax(z), another route
    s[torch.arange(z.shape[0], device=z.device), y] -= 1.0
    return s / z.shape[0]


_NO_DECAY = "lambda = 0 (with weight decay the wrong shape meets + lambda W(i) and the code crashes)"

MLP_BUGS: tuple[Bug, ...] = (
    Bug(
        "seed_sign_slip", "the seed's sign: dJ/dy_hat = y - y_hat", "(4)",
        "dJ_da[L] = y - y_hat", "dJ_da[L] = y_hat - y",
        "J = 1/2 ||y_hat - y||^2 grows with y_hat - y, so y - y_hat is minus the gradient: every "
        "gradient flips sign and gradient descent climbs the loss.",
        where="loss half_sse (the seed's)", specs=Applies(losses=("half_sse",)).specs, rewire=loss_gradient(_sign_slip),
    ),
    Bug(
        "dW_missing_transpose", "missing transpose in dJ/dW", "(6)",
        "dJ_dW = a[i-1].T @ dJ_dz", "dJ_dW = dJ_dz.T @ a[i-1]",
        "This is dJ/dW(i)^T, shape (d_{i-1}, d_i): a shape error on a non-square layer; a square "
        "layer hides the shape error and only the (transposed) values are wrong; a 1x1 layer hides it all.",
        where=_NO_DECAY, specs=Applies(weight_decay=False).specs, rewire=_every(_DWNoTranspose),
    ),
    Bug(
        "dW_missing_transpose_square", "missing transpose in dJ/dW, square layers", "(6)",
        "dJ_dW = a[i-1].T @ dJ_dz", "dJ_dW = dJ_dz.T @ a[i-1]",
        "The same slip where every layer is square: no shape error to give it away, so only the values "
        "can, and only when dJ/dW(i) is not symmetric (a 1x1 layer, or a symmetric product, hides it).",
        where="all widths equal", specs=Applies(equal_widths=True).specs, rewire=_every(_DWNoTranspose),
    ),
    Bug(
        "dW_transpose_reshaped", "missing transpose, 'fixed' with reshape", "(6)",
        "dJ_dW = (a[i-1].T @ dJ_dz).reshape(W.shape)", "dJ_dW = dJ_dz.T @ a[i-1]",
        "Reshaping is not transposing: the shape error goes away but the numbers land in the wrong "
        "places. Only a layer with d_i > 1 and d_{i-1} > 1 shows it (for a vector the two coincide).",
        where=_ANY, specs=Applies().specs, rewire=_every(_DWReshaped),
    ),
    Bug(
        "dW_from_a_i", "dJ/dW from the wrong cache entry, a(i)", "(6)",
        "dJ_dW = dJ_dz.T @ a[i]", "dJ_dW = dJ_dz.T @ a[i-1]",
        "W(i) multiplies a(i-1), the layer's input; a(i) is its output. Off by one in the cache: a "
        "(d_i, d_i) shape error unless the layer is square, wrong values always.",
        where=_NO_DECAY, specs=Applies(weight_decay=False).specs, rewire=_every(_DWFromOutput),
    ),
    Bug(
        "db_batch_mean", "bias gradient averaged over the batch", "(7)",
        "dJ_db = dJ_dz.mean(dim=0)", "dJ_db = dJ_dz.sum(dim=0)",
        "b(i) is added to every row, so its gradient is the sum of the rows' gradients; any 1/N "
        "belongs to the loss and is already in dJ/dz. The mean is N times too small (right when N = 1).",
        where=_ANY, specs=Applies().specs, rewire=_every(_DbMean),
    ),
    Bug(
        "sigmoid_derivative_of_z", "sigmoid derivative of z: z(1 - z)", "(5)",
        "f_prime = z * (1 - z)", "f_prime = a * (1 - a)",
        "sigma'(z) = sigma(z)(1 - sigma(z)) = a(1 - a): the short formula takes the activation, not "
        "the pre-activation. A helper sigmoid_prime(x) = x * (1 - x) invites passing z.",
        where="a sigmoid layer", specs=_SIGMOID.specs,
        rewire=_derivative("sigmoid", "z", lambda z: z * (1.0 - z)),
    ),
    Bug(
        "relu_derivative_a_geq_0", "relu derivative as a >= 0", "(5)",
        "f_prime = (a >= 0)", "f_prime = (a > 0)",
        "a = max(z, 0) is never negative, so a >= 0 is always true: relu's derivative becomes 1 and "
        "dead units pass gradient. (z >= 0 differs only at z = 0, see the equivalent entries.)",
        where="a relu layer", specs=_RELU.specs, rewire=_derivative("relu", "a", lambda a: (a >= 0).to(a.dtype)),
    ),
    Bug(
        "hidden_derivative_forgotten", "activation derivative forgotten in a hidden layer", "(5)",
        "dJ_dz[L-1] = dJ_da[L-1]", "dJ_dz[L-1] = dJ_da[L-1] * f_prime(z[L-1])",
        "Treats the last hidden layer as linear: right only where f' = 1, so every gradient from "
        "that layer down is wrong.",
        where="L >= 2, hidden activation not the identity",
        specs=Applies(activations=(*_SMOOTH, "relu"), min_depth=2).specs, rewire=_at(-2, _linear),
    ),
    Bug(
        "half_sse_gradient_doubled", "half_sse gradient without the 1/2", "(4)",
        "dJ_da[L] = 2 * (y_hat - y)", "dJ_da[L] = y_hat - y",
        "The 1/2 in J = 1/2 ||y_hat - y||^2 is there to cancel the 2 of the square; keeping both "
        "the 1/2 in J and the 2 in the gradient doubles every gradient.",
        where="loss half_sse", specs=Applies(losses=("half_sse",)).specs, rewire=loss_gradient(_half_sse_doubled),
    ),
    Bug(
        "mse_not_divided_by_batch", "mean loss not divided by the batch size", "(4)",
        "dJ_da[L] = 2 * (y_hat - y) / d_L", "dJ_da[L] = 2 * (y_hat - y) / (N * d_L)",
        "mse averages over all N d_L entries; dividing by d_L alone makes every gradient N times "
        "too large (right when N = 1).",
        where="loss mse", specs=Applies(losses=("mse",)).specs, rewire=loss_gradient(_mse_per_row),
    ),
    Bug(
        "softmax_ce_extra_factor", "softmax + cross-entropy with an extra softmax derivative", "(4)",
        "dJ_dz[L] = (softmax(z) - onehot(y)) / N * s * (1 - s)", "dJ_dz[L] = (softmax(z) - onehot(y)) / N",
        "softmax(z) - onehot(y) is already the gradient with respect to the logits, the softmax "
        "Jacobian included; multiplying by s(1 - s) applies a second (and diagonal-only) derivative.",
        where="loss cross_entropy", specs=_CROSS_ENTROPY.specs, rewire=loss_gradient(_softmax_factor_again),
    ),
    Bug(
        "dX_without_W", "dJ/dX formed without W(1)", "(8)",
        "dJ_dX = dJ_dz[1]", "dJ_dX = dJ_dz[1] @ W[1]",
        "dz(1)/dX = W(1): leaving it out hands back dJ/dz(1), shape (N, d_1): a shape error unless "
        "d_1 = d_0, wrong values even then.",
        where=_ANY, specs=Applies().specs, rewire=_at(0, twin_of(_DaPrevWithoutW)),
    ),
    Bug(
        "da_prev_without_W", "dJ/da(i-1) formed without W(i)", "(8)",
        "dJ_da[i-1] = dJ_dz[i]", "dJ_da[i-1] = dJ_dz[i] @ W[i]",
        "Every hand-off skips the layer's weights. The shapes only fit when all widths are equal "
        "(otherwise the next line fails, or broadcasts); then every gradient below the output is wrong.",
        where="all widths equal (else it crashes)", specs=Applies(equal_widths=True).specs,
        rewire=_every(_DaPrevWithoutW),
    ),
    Bug(
        "weight_decay_overwrites_data", "gradient overwritten, not accumulated: weight decay", "(6)",
        "dJ_dW = dJ_dz.T @ a[i-1];  dJ_dW = lam * W", "dJ_dW = dJ_dz.T @ a[i-1] + lam * W",
        "W(i) appears in J twice, in the data term and in the penalty, so its gradient is the sum of "
        "both; assigning the penalty's part overwrites the data term's.",
        where="lambda > 0", specs=Applies(weight_decay=True).specs, rewire=_every(_DecayOverwrites),
    ),
    Bug(
        "bias_decayed", "weight decay applied to the biases", "(7)",
        "dJ_db = dJ_dz.sum(dim=0) + lam * b", "dJ_db = dJ_dz.sum(dim=0)",
        "J (eq. 3) penalises the weights only; lam * b is the gradient of a penalty that is not in J.",
        where="lambda > 0", specs=Applies(weight_decay=True).specs, rewire=_every(_DbDecayed),
    ),
    Bug(
        "first_layer_skipped", "layer loop off by one: first layer skipped", "(6)",
        "for i in range(2, L + 1):", "for i in range(1, L + 1):",
        "One-based layers over a range that should start at 1: dJ/dW(1) and dJ/db(1) keep the zeros "
        "they were initialised with.",
        where=_ANY, specs=Applies().specs, rewire=_at(0, twin_of(_Skipped)),
    ),
    Bug(
        "last_layer_skipped", "layer loop off by one: last layer skipped", "(6)",
        "for i in range(1, L):", "for i in range(1, L + 1):",
        "range's end is exclusive: the output layer's dJ/dW(L) and dJ/db(L) are never written and "
        "stay zero.",
        where=_ANY, specs=Applies().specs, rewire=_at(-1, twin_of(_Skipped)),
    ),
    # ---- equivalent mutants: the same numbers by another route --------------------------
    Bug(
        "relu_derivative_from_z", "relu' from z > 0 instead of a > 0", "(5)",
        "f_prime = (z > 0)", "f_prime = (a > 0)",
        "a = max(z, 0) is positive exactly when z is: the same mask, bit for bit. Which cache entry "
        "to read is a memory choice, not a correctness one.",
        where="a relu layer", specs=_RELU.specs, rewire=_derivative("relu", "z", lambda z: (z > 0).to(z.dtype)),
        equivalent=True,
    ),
    Bug(
        "relu_derivative_one_at_zero", "relu'(0) = 1: z >= 0", "(5)",
        "f_prime = (z >= 0)", "f_prime = (a > 0)",
        "Differs only where z is exactly 0, where relu has no derivative: 0 and 1 are both valid "
        "subgradients (torch picks 0). Finite differences cannot see a slope at a kink, and the "
        "harness keeps cases KINK_MARGIN away from it; there the two masks are identical.",
        where="a relu layer", specs=_RELU.specs, rewire=_derivative("relu", "z", lambda z: (z >= 0).to(z.dtype)),
        equivalent=True,
    ),
    Bug(
        "sigmoid_derivative_recomputed", "sigmoid' recomputed from z", "(5)",
        "s = sigmoid(z); f_prime = s * (1 - s)", "f_prime = a * (1 - a)",
        "sigmoid(z) is a: the same number again, to round-off. Recomputing a forward quantity is "
        "a style fault (the cache has it), not a wrong gradient.",
        where="a sigmoid layer", specs=_SIGMOID.specs, rewire=_derivative("sigmoid", "z", _sigmoid_prime_recomputed),
        equivalent=True,
    ),
    Bug(
        "dW_transpose_of_product", "dJ/dW as (a(i-1)^T dJ/dz(i))^T", "(6)",
        "dJ_dW = (a[i-1].T @ dJ_dz).T", "dJ_dW = dJ_dz.T @ a[i-1]",
        "(A^T B)^T = B^T A: the same matrix, each entry the same sum of products over the batch.",
        where=_ANY, specs=Applies().specs, rewire=_every(_DWTransposeOfProduct), equivalent=True,
    ),
    Bug(
        "db_as_ones_product", "dJ/db as 1^T dJ/dz(i)", "(7)",
        "dJ_db = torch.ones(N) @ dJ_dz", "dJ_db = dJ_dz.sum(dim=0)",
        "Multiplying by a row of ones is summing over the batch, written as eq. (7) writes it.",
        where=_ANY, specs=Applies().specs, rewire=_every(_DbOnesProduct), equivalent=True,
    ),
    Bug(
        "softmax_via_logsumexp", "softmax as exp(z - logsumexp(z))", "(4)",
        "s = exp(z - logsumexp(z)); dJ_dz[L] = (s - onehot(y)) / N",
        "dJ_dz[L] = (softmax(z) - onehot(y)) / N",
        "exp(z - logsumexp(z)) is softmax(z), shifted for stability the same way; only round-off differs.",
        where="loss cross_entropy", specs=_CROSS_ENTROPY.specs, rewire=loss_gradient(_softmax_via_logsumexp),
        equivalent=True,
    ),
)  # fmt: skip
"""The MLP entries of the catalogue: the classic bugs first, then the equivalent mutants."""
