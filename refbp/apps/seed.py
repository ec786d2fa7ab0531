"""The seed thread's formulas, as written and corrected, each run through refbp's harness.

The seed (a question-and-answer thread, "why do we need dJ/dX?") describes a one-hidden-layer
sigmoid network with J = 1/2 ||y - y_hat||^2 and X "a matrix of data with one row per
observation", and writes, in column notation:

    z(i) = W_i a(i-1) + b_i,   a(0) = X,   a(i) = sigma(z(i)),   y_hat = a(L)
    dJ/dW_1 = dJ/da(2) da(2)/dz(2) dz(2)/da(1) da(1)/dz(1) dz(1)/dW_1
    dJ/da(2) = y - y_hat,  da(i)/dz(i) = a(i) o (1 - a(i)),  dz(i)/da(i-1) = W_i,
    dz(i)/dW_i = a(i-1)

``SEED_FORMULAS`` holds one record per statement: the formula as written, evaluated
literally on tensors with one row per observation, and the corrected formula. Each returns
a dict of gradients keyed like ``Gradients.as_dict()``, which ``refbp.check`` compares with
autograd and finite differences. A formula whose products do not even type-check raises
``ShapeMismatchError`` and is reported as such. ``render_seed_document()`` writes
docs/seed_corrected.md from the verdicts; tests/test_seed.py keeps them true.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..nn.mlp import MLP
from ..verify.check import CheckResult, check

__all__ = [
    "SEED_FORMULAS",
    "Attempt",
    "SeedFormula",
    "SeedVerdict",
    "ShapeMismatchError",
    "dz_dW_tensor",
    "evaluate",
    "evaluate_all",
    "render_seed_document",
    "seed_network",
    "seed_point",
]

GradFn = Callable[[MLP, Tensor, Tensor], dict[str, Tensor]]
"""(net, X, y) -> {"W1": dJ/dW(1), ...}: gradients keyed like Gradients.as_dict()."""


class ShapeMismatchError(ValueError):
    """A product in a formula does not type-check: the formula names no tensor at all."""


# ---- the seed's network and data -------------------------------------------------------
def seed_network(seed: int = 0) -> MLP:
    """The seed's network: 2-3-1, sigmoid on both layers, J = 1/2 ||y - y_hat||^2, float64."""
    return MLP.random([2, 3, 1], activations=["sigmoid", "sigmoid"], loss="half_sse", seed=seed)


def seed_point() -> tuple[Tensor, Tensor]:
    """XOR, one row per observation as the seed says: X (4, 2) and y (4, 1). N = 4 differs
    from every layer width, so a product that does not type-check cannot pass by accident."""
    X = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)  # (N, d_0)
    y = torch.tensor([[0.0], [1.0], [1.0], [0.0]], dtype=torch.float64)  # (N, d_2)
    return X, y


# ---- literal products ------------------------------------------------------------------
def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _mm(A: Tensor, B: Tensor, left: str, right: str) -> Tensor:
    """A @ B, or ShapeMismatchError naming both factors when the inner sizes differ."""
    if A.dim() != 2 or B.dim() != 2 or A.shape[1] != B.shape[0]:
        raise ShapeMismatchError(
            f"{left} {_shape(A)} times {right} {_shape(B)}: inner sizes {A.shape[-1]} and {B.shape[0]} differ"
        )
    return A @ B


def _forward_rows(net: MLP, X: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Eq. (1)-(2) in row form: z(i) = a(i-1) W_i^T + b_i, a(i) = sigma(z(i)); a[0] = X."""
    a, z = [X], [X]  # z[0] is a placeholder: the input has no pre-activation
    for W, b in zip(net.weights, net.biases, strict=True):
        z.append(a[-1] @ W.T + b)  # (1) (N, d_{i-1}) (d_{i-1}, d_i) + (d_i,) -> (N, d_i)
        a.append(torch.sigmoid(z[-1]))  # (2) (N, d_i)
    return a, z


def _backward_rows(net: MLP, a: list[Tensor], dJ_da_L: Tensor) -> dict[str, Tensor]:
    """The seed's chain rule in row form, from a given dJ/da(L): eqs. (5)-(9)."""
    grads: dict[str, Tensor] = {}
    dJ_da = dJ_da_L  # (N, d_L)
    for i in range(net.L, 0, -1):
        W = net.weights[i - 1]  # (d_i, d_{i-1})
        dJ_dz = dJ_da * a[i] * (1 - a[i])  # (5) da(i)/dz(i) = a(i) o (1 - a(i)), elementwise   (N, d_i)
        grads[f"a{i}"], grads[f"z{i}"] = dJ_da, dJ_dz
        grads[f"W{i}"] = dJ_dz.T @ a[i - 1]  # (6) (d_i, N) (N, d_{i-1}) -> (d_i, d_{i-1})
        grads[f"b{i}"] = dJ_dz.sum(dim=0)  # (7) (d_i,)
        dJ_da = dJ_dz @ W  # (8) dz(i)/da(i-1) = W_i:  (N, d_i) (d_i, d_{i-1}) -> (N, d_{i-1})
    grads["X"] = dJ_da  # (9) dJ/dX = dJ/da(0)   (N, d_0)
    return grads


# ---- the formulas, as written and corrected ---------------------------------------------
def _forward_as_written(net: MLP, X: Tensor, y: Tensor) -> dict[str, Tensor]:
    a = X  # a(0) = X   (N, d_0)
    for i, (W, b) in enumerate(zip(net.weights, net.biases, strict=True), start=1):
        z = _mm(W, a, f"W_{i}", f"a({i - 1})") + b  # z(i) = W_i a(i-1) + b_i  as written
        a = torch.sigmoid(z)
    raise AssertionError("unreachable: W_1 X never type-checks when N != d_0")  # pragma: no cover


def _forward_corrected(net: MLP, X: Tensor, y: Tensor) -> dict[str, Tensor]:
    a, _ = _forward_rows(net, X)  # z(i) = a(i-1) W_i^T + b_i
    return _backward_rows(net, a, a[-1] - y)


def _sign_as_written(net: MLP, X: Tensor, y: Tensor) -> dict[str, Tensor]:
    a, _ = _forward_rows(net, X)
    return _backward_rows(net, a, y - a[-1])  # dJ/da(2) = y - y_hat  as written


def _sign_corrected(net: MLP, X: Tensor, y: Tensor) -> dict[str, Tensor]:
    a, _ = _forward_rows(net, X)
    return _backward_rows(net, a, a[-1] - y)  # (4) dJ/da(2) = y_hat - y


def _sigmoid_factor(net: MLP, X: Tensor, y: Tensor) -> dict[str, Tensor]:
    grads = _sign_corrected(net, X, y)  # dJ/dz(i) = dJ/da(i) o a(i) o (1 - a(i)), eq. (5)
    return {"z2": grads["z2"], "z1": grads["z1"]}


def _W_factor(net: MLP, X: Tensor, y: Tensor) -> dict[str, Tensor]:
    grads = _sign_corrected(net, X, y)  # dJ/da(i-1) = dJ/dz(i) W_i, eq. (8)
    return {"a1": grads["a1"], "X": grads["X"]}


def _dz_dW_as_written(net: MLP, X: Tensor, y: Tensor) -> dict[str, Tensor]:
    a, _ = _forward_rows(net, X)
    dJ_dz = _sign_corrected(net, X, y)
    # dJ/dW_i = dJ/dz(i) dz(i)/dW_i = dJ/dz(i) a(i-1)  as written   (N, d_i) (N, d_{i-1})
    return {f"W{i}": _mm(dJ_dz[f"z{i}"], a[i - 1], f"dJ/dz({i})", f"a({i - 1})") for i in (2, 1)}


def dz_dW_tensor(a_prev: Tensor, d_i: int) -> Tensor:
    """dz(i)/dW(i) as the tensor it is: T[n, k, p, q] = dz(i)[n, k] / dW(i)[p, q] = [k = p] a(i-1)[n, q].

    Shape (N, d_i, d_i, d_{i-1}). "dz(i)/dW_i = a(i-1)" is this tensor's one non-zero block:
    row n of z(i) depends on row p of W(i) only through z[n, p] = a(i-1)[n] . W(i)[p] + b[p]."""
    eye = torch.eye(d_i, dtype=a_prev.dtype, device=a_prev.device)  # [k = p]   (d_i, d_i)
    return torch.einsum("kp,nq->nkpq", eye, a_prev)  # (N, d_i, d_i, d_{i-1})


def _dz_dW_corrected(net: MLP, X: Tensor, y: Tensor) -> dict[str, Tensor]:
    a, _ = _forward_rows(net, X)
    dJ_dz = _sign_corrected(net, X, y)
    grads = {}
    for i in (2, 1):
        T = dz_dW_tensor(a[i - 1], net.dims[i])  # (N, d_i, d_i, d_{i-1})
        # dJ/dW[p, q] = sum_{n, k} dJ/dz[n, k] T[n, k, p, q] = (dJ/dz^T a(i-1))[p, q], eq. (6)
        grads[f"W{i}"] = torch.einsum("nk,nkpq->pq", dJ_dz[f"z{i}"], T)  # (d_i, d_{i-1})
    return grads


def _chain_as_written(net: MLP, X: Tensor, y: Tensor) -> dict[str, Tensor]:
    a, _ = _forward_rows(net, X)
    W2 = net.weights[1]
    factors = [
        (y - a[2], "dJ/da(2) = y - y_hat"),  # (N, d_2)
        (a[2] * (1 - a[2]), "da(2)/dz(2) = a(2) o (1 - a(2))"),  # (N, d_2)
        (W2, "dz(2)/da(1) = W_2"),  # (d_2, d_1)
        (a[1] * (1 - a[1]), "da(1)/dz(1) = a(1) o (1 - a(1))"),  # (N, d_1)
        (a[0], "dz(1)/dW_1 = a(0)"),  # (N, d_0)
    ]
    product, name = factors[0]
    for factor, factor_name in factors[1:]:  # left to right, as written
        product = _mm(product, factor, name, factor_name)
        name = f"[{name} ... {factor_name.split(' = ')[0]}]"
    return {"W1": product}


def _chain_corrected(net: MLP, X: Tensor, y: Tensor) -> dict[str, Tensor]:
    a, _ = _forward_rows(net, X)
    W2 = net.weights[1]  # (d_2, d_1)
    dJ_dz2 = (a[2] - y) * a[2] * (1 - a[2])  # (4), (5)   (N, d_2)
    dJ_dz1 = (dJ_dz2 @ W2) * a[1] * (1 - a[1])  # (8), (5)   (N, d_2) (d_2, d_1) -> (N, d_1)
    return {"W1": dJ_dz1.T @ a[0], "W2": dJ_dz2.T @ a[1]}  # (6)   (d_1, N) (N, d_0) -> (d_1, d_0)


def _reversed_as_written(net: MLP, X: Tensor, y: Tensor) -> dict[str, Tensor]:
    a, _ = _forward_rows(net, X)
    dJ_dz = _sign_corrected(net, X, y)
    # a(i-1)^T dJ/dz(i): (d_{i-1}, N) (N, d_i) -> (d_{i-1}, d_i), W(i)'s shape transposed
    return {f"W{i}": a[i - 1].T @ dJ_dz[f"z{i}"] for i in (2, 1)}


def _reversed_corrected(net: MLP, X: Tensor, y: Tensor) -> dict[str, Tensor]:
    a, _ = _forward_rows(net, X)
    dJ_dz = _sign_corrected(net, X, y)
    return {f"W{i}": dJ_dz[f"z{i}"].T @ a[i - 1] for i in (2, 1)}  # (6) (d_i, N) (N, d_{i-1})


@dataclass(frozen=True)
class SeedFormula:
    """One statement of the seed: as written, corrected, and why.

    Attributes:
        key: a short name ("sign", "forward", ...).
        title: what the statement is about.
        as_written: the seed's formula, plain text.
        corrected: the formula that passes, in refbp's row notation (equation numbers).
        why: one paragraph.
        written: (net, X, y) -> gradients computed by the formula as written.
        fixed: (net, X, y) -> gradients computed by the corrected formula.
    """

    key: str
    title: str
    as_written: str
    corrected: str
    why: str
    written: GradFn
    fixed: GradFn


SEED_FORMULAS: tuple[SeedFormula, ...] = (
    SeedFormula(
        "forward", "The forward pass with X holding one row per observation",
        "z(i) = W_i a(i-1) + b_i,  a(0) = X",
        "z(i) = a(i-1) W_i^T + b_i   (eq. 1; the seed's columns are these rows transposed)",
        "W_1 is (d_1, d_0) and X is (N, d_0): W_1 X multiplies d_0 columns by N rows. The seed's "
        "formula is right for one observation stored as a column; with observations as rows, "
        "transpose both sides: z(i)^T = (W_i a(i-1)^T)^T = a(i-1) W_i^T. The corrected forward "
        "pass, followed by the corrected backward pass, gives every gradient, dJ/dX included.",
        _forward_as_written, _forward_corrected,
    ),
    SeedFormula(
        "sign", "The sign of dJ/dy_hat for J = 1/2 ||y - y_hat||^2",
        "dJ/da(2) = dJ/dy_hat = y - y_hat",
        "dJ/da(2) = y_hat - y   (eq. 4)",
        "d/dy_hat of 1/2 (y - y_hat)^2 is (y - y_hat) times the inner derivative -1. With the "
        "seed's sign every gradient below it is negated, so gradient descent would climb J: "
        "each one differs from autograd by twice its own size (normwise relative error 2).",
        _sign_as_written, _sign_corrected,
    ),
    SeedFormula(
        "sigmoid", "The sigmoid's derivative",
        "da(i)/dz(i) = a(i) o (1 - a(i))",
        "dJ/dz(i) = dJ/da(i) o a(i) o (1 - a(i))   (eq. 5, unchanged)",
        "Right as written, used elementwise: da(i)/dz(i) is a diagonal Jacobian, so multiplying "
        "by it is the elementwise product o, never a matrix product.",
        _sigmoid_factor, _sigmoid_factor,
    ),
    SeedFormula(
        "W-factor", "The factor dz(i)/da(i-1)",
        "dz(i)/da(i-1) = W_i",
        "dJ/da(i-1) = dJ/dz(i) W_i   (eq. 8, unchanged)",
        "Right as written, on the right of dJ/dz(i) when dJ/dz(i) holds one row per observation: "
        "(N, d_i) (d_i, d_{i-1}). In the seed's column notation the same step reads W_i^T delta(i).",
        _W_factor, _W_factor,
    ),
    SeedFormula(
        "dz/dW", "What dz(i)/dW_i = a(i-1) means as a tensor statement",
        "dJ/dW_i = dJ/dz(i) dz(i)/dW_i = dJ/dz(i) a(i-1)",
        "dz(i)[n,k]/dW_i[p,q] = [k = p] a(i-1)[n,q], so dJ/dW_i = dJ/dz(i)^T a(i-1)   (eq. 6)",
        "dz(i)/dW_i is not a matrix but an (N, d_i, d_i, d_{i-1}) tensor whose only non-zero "
        "entries are copies of a(i-1). Contracting dJ/dz(i) with it over the observation n and "
        "the unit k sums, over the batch, the outer product of each row of dJ/dz(i) with the "
        "same row of a(i-1): dJ/dz(i)^T a(i-1). The literal product does not type-check.",
        _dz_dW_as_written, _dz_dW_corrected,
    ),
    SeedFormula(
        "chain", "The chain rule for dJ/dW_1 as a product of five factors",
        "dJ/dW_1 = dJ/da(2) da(2)/dz(2) dz(2)/da(1) da(1)/dz(1) dz(1)/dW_1",
        "dJ/dW_1 = [((y_hat - y) o a(2) o (1 - a(2))) W_2 o a(1) o (1 - a(1))]^T a(0)   (eqs. 4, 5, 8, 5, 6)",
        "Multiplied left to right, the first two factors are (N, d_2) and (N, d_2) and the product "
        "stops there. Written correctly, the sigmoid factors are elementwise (o), W_2 multiplies "
        "on the right, and the last factor enters transposed on the other side, as in eq. (6).",
        _chain_as_written, _chain_corrected,
    ),
    SeedFormula(
        "order", "dz(i)/dW_i = a(i-1) moved to where the product type-checks",
        "dJ/dW_i = a(i-1)^T dJ/dz(i)",
        "dJ/dW_i = dJ/dz(i)^T a(i-1)   (eq. 6)",
        "Putting a(i-1) first makes the product type-check, but it yields a (d_{i-1}, d_i) "
        "matrix: dJ/dW_i transposed. The harness reports a wrong-shaped gradient as a failing "
        "row. Order matters in matrix calculus.",
        _reversed_as_written, _reversed_corrected,
    ),
)  # fmt: skip
"""The seed's statements, as written and corrected, in the order of the document."""


# ---- running them through the harness --------------------------------------------------
@dataclass(frozen=True)
class Attempt:
    """One formula evaluated and checked.

    Attributes:
        formula: the formula's text.
        result: refbp.check's result on the gradients it produced; None if it did not type-check.
        error: why it did not type-check; None if it did.
    """

    formula: str
    result: CheckResult | None
    error: str | None

    @property
    def verdict(self) -> str:
        """ "passes", "fails" or "does not type-check"."""
        if self.result is None:
            return "does not type-check"
        return "passes" if self.result.passed else "fails"


@dataclass(frozen=True)
class SeedVerdict:
    """A formula of the seed with both attempts."""

    formula: SeedFormula
    written: Attempt
    corrected: Attempt


def _attempt(text: str, fn: GradFn, net: MLP, X: Tensor, y: Tensor, references: tuple[str, ...]) -> Attempt:
    try:
        grads = fn(net, X, y)
    except ShapeMismatchError as err:
        return Attempt(text, None, str(err))
    except RuntimeError as err:  # a product torch itself refused
        return Attempt(text, None, str(err).splitlines()[0])
    return Attempt(text, check(net, X, y, grads=grads, references=references, fd_mode="full"), None)


def evaluate(
    formula: SeedFormula,
    net: MLP | None = None,
    X: Tensor | None = None,
    y: Tensor | None = None,
    *,
    references: tuple[str, ...] = ("autograd", "fd"),
) -> SeedVerdict:
    """Run ``formula`` as written and corrected through ``refbp.check`` (default: the seed's
    network at the XOR point)."""
    if not isinstance(formula, SeedFormula):
        raise TypeError(f"formula must be a SeedFormula from SEED_FORMULAS, got {type(formula).__name__}")
    net = seed_network() if net is None else net
    if X is None or y is None:
        X, y = seed_point()
    return SeedVerdict(
        formula,
        _attempt(formula.as_written, formula.written, net, X, y, references),
        _attempt(formula.corrected, formula.fixed, net, X, y, references),
    )


def evaluate_all(*, references: tuple[str, ...] = ("autograd", "fd")) -> list[SeedVerdict]:
    """Every record of SEED_FORMULAS, on the seed's network at the XOR point."""
    return [evaluate(formula, references=references) for formula in SEED_FORMULAS]


# ---- the document ----------------------------------------------------------------------
def _describe(attempt: Attempt) -> list[str]:
    if attempt.result is None:
        return [f"**Does not type-check:** {attempt.error}."]
    result = attempt.result
    n_rows = len(result.rows)
    if result.passed:
        return [f"**Passes** `refbp.check`: all {n_rows} comparisons (autograd and finite differences)."]
    lines = [
        f"**Fails** `refbp.check`: {len(result.failures)} of {n_rows} comparisons.",
        "",
        "| dJ/d | shape | reference's shape | vs autograd | vs finite differences | note |",
        "|---|---|---|---:|---:|---|",
    ]
    names = list(dict.fromkeys(row.name for row in result.failures))
    for name in names:
        rows = {row.reference.split("-")[0]: row for row in result.rows if row.name == name}
        first = next(iter(rows.values()))
        errors = [f"{rows[r].max_rel_error:.3g}" if r in rows else "" for r in ("autograd", "fd")]
        shape = "x".join(str(s) for s in first.shape)
        expected = "x".join(str(s) for s in first.expected_shape)
        lines.append(f"| {name} | {shape} | {expected} | {errors[0]} | {errors[1]} | {first.note} |")
    lines += ["", "(normwise relative error: max_k abs(g_k - r_k) / max_k abs(r_k); inf for a wrong shape)"]
    return lines


def render_seed_document() -> str:
    """docs/seed_corrected.md: each formula of the seed as written, its verdict, the corrected
    formula and its verdict, all from running ``evaluate_all()`` now."""
    net = seed_network()
    verdicts = evaluate_all()
    lines = [
        "# The seed, corrected, by the harness",
        "",
        "<!-- Generated by scripts/make_docs.py from refbp/seed.py; do not edit by hand.",
        "     tests/test_docs.py checks that it is up to date. -->",
        "",
        "refbp grew out of a question-and-answer thread, *why do we need the derivative of the loss",
        "with respect to X?*, answered with the forward and backward pass of a one-hidden-layer",
        "sigmoid network and J = 1/2 ||y - y_hat||^2. The answer writes one observation as a",
        "column, yet says X holds one row per observation. This page takes each formula as",
        "written, evaluates it literally with torch on that network, and runs what comes out",
        "through `refbp.check` (torch.autograd and float64 finite differences). The verdicts below",
        "are not prose: `refbp/seed.py` computes them and `tests/test_seed.py` asserts them.",
        "",
        f"The network: {'-'.join(str(d) for d in net.dims)}, sigmoid on both layers, "
        "`refbp.seed.seed_network()` (parameters",
        "from seed 0). The point: XOR, X (4, 2) and y (4, 1), one row per observation. Corrected",
        "formulas use refbp's equation numbers ([equations.md](equations.md)).",
        "",
        "| # | the seed writes | as written | corrected | after correction |",
        "|---|---|---|---|---|",
    ]
    for k, v in enumerate(verdicts, start=1):
        f = v.formula
        corrected = f.corrected.split("   (")[0]
        lines.append(f"| {k} | `{f.as_written}` | {v.written.verdict} | `{corrected}` | {v.corrected.verdict} |")
    for k, v in enumerate(verdicts, start=1):
        f = v.formula
        lines += ["", f"## {k}. {f.title}", "", f"As written: `{f.as_written}`", ""]
        lines += _describe(v.written)
        lines += ["", f"Corrected: `{f.corrected}`", ""]
        lines += _describe(v.corrected)
        lines += ["", f"Why: {f.why}"]
    return "\n".join(lines) + "\n"
