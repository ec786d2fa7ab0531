"""Curvature by hand: the top Hessian eigenvalue by power iteration, and a few Newton-CG steps,
each run twice, with refbp's manual H v (the R-operator) and with torch's double backward.

    python -m refbp.examples.curvature                  # writes reports/curvature.png and curvature.json
    python -m refbp.examples.curvature --newton-steps 8 --seed 1 --out reports

The network is a 2-16-16-1 tanh MLP fitting y = sin(2 x1) cos(x2) on 64 points drawn from the
seed (float64, mse). Power iteration: v <- H v / ||H v||, lambda_k = v . H v, which converges to
the eigenvalue of largest magnitude. Newton-CG ("Hessian-free"): at each step solve
(H + mu I) p = -g by conjugate gradients, using only products H u, stopped after a few
iterations or at a direction of negative curvature, then w <- w + p. Both runs use the same
algorithm and differ only in who computes H u, so their numbers agree to rounding.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ..apps.io import write_atomic
from ..nn.keys import Key
from ..nn.layer import Params
from ..nn.mlp import MLP
from ..nn.second_order import hvp

__all__ = ["curvature", "main", "manual_product", "point", "torch_product"]

Vector = dict[str, Tensor]
Product = Callable[[MLP, Vector], Vector]

DAMPING = 1e-2
"""mu in (H + mu I) p = -g: keeps CG's system positive definite near a flat direction."""

CG_ITERATIONS = 20
"""Conjugate-gradient iterations per Newton step, at most."""


def point(seed: int = 0, n: int = 64) -> tuple[MLP, Tensor, Tensor]:
    """The network and the data: X (n, 2) uniform in [-2, 2]^2, y = sin(2 x1) cos(x2)."""
    generator = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 4.0 - 2.0
    y = (torch.sin(2.0 * X[:, 0]) * torch.cos(X[:, 1])).unsqueeze(1)
    net = MLP.random([2, 16, 16, 1], activations=["tanh", "tanh", "identity"], loss="mse", seed=seed)
    return net, X, y


def manual_product(X: Tensor, y: Tensor) -> Product:
    """u -> H u by refbp's R-operator (refbp.nn.second_order)."""
    return lambda net, u: {name: t for name, t in hvp(net, X, y, u).Hv.items() if name != "X"}


def torch_product(X: Tensor, y: Tensor) -> Product:
    """u -> H u by torch.autograd: the gradient of <dJ/dw, u> (double backward on the oracle)."""

    def product(net: MLP, u: Vector) -> Vector:
        leaves = {name: t.detach().clone().requires_grad_(True) for name, t in net.parameters().items()}
        J = net.torch_J(X, y, Params({Key.parse(n): t for n, t in leaves.items()}, net.ties), {})
        grads = torch.autograd.grad(J, list(leaves.values()), create_graph=True)
        dot = torch.stack([(g * u[n]).sum() for g, n in zip(grads, leaves, strict=True)]).sum()
        return dict(zip(leaves, torch.autograd.grad(dot, list(leaves.values())), strict=True))

    return product


def _dot(u: Vector, v: Vector) -> float:
    return float(sum(float((u[n] * v[n]).sum()) for n in u))


def _axpy(a: float, x: Vector, y: Vector) -> Vector:
    return {n: a * x[n] + y[n] for n in y}  # a x + y


def power_iteration(net: MLP, product: Product, iterations: int, seed: int) -> list[float]:
    """lambda_k = v_k . H v_k, v_{k+1} = H v_k / ||H v_k||: the estimates, one per iteration."""
    generator = torch.Generator().manual_seed(seed)
    v = {n: torch.randn(t.shape, generator=generator, dtype=t.dtype) for n, t in net.parameters().items()}
    norm = math.sqrt(_dot(v, v))
    v = {n: t / norm for n, t in v.items()}
    estimates = []
    for _ in range(iterations):
        Hv = product(net, v)
        estimates.append(_dot(v, Hv))
        norm = math.sqrt(_dot(Hv, Hv))
        v = {n: t / norm for n, t in Hv.items()}
    return estimates


def newton_cg(net: MLP, X: Tensor, y: Tensor, product: Product, steps: int) -> list[float]:
    """J before each of ``steps`` Newton-CG steps and after the last; ``net`` is updated."""
    losses = []
    for _ in range(steps):
        cache = net.forward(X)
        losses.append(float(net.loss(cache, y)))
        g = {n: t for n, t in net.backward(cache, y).as_dict().items() if n in net.parameters()}
        p = {n: torch.zeros_like(t) for n, t in g.items()}
        r = {n: -t for n, t in g.items()}  # r = -g - (H + mu I) p, p = 0
        d = dict(r)
        rr = _dot(r, r)
        for _ in range(CG_ITERATIONS):
            Hd = _axpy(DAMPING, d, product(net, d))  # (H + mu I) d
            curvature = _dot(d, Hd)
            if curvature <= 0:  # a direction of negative curvature: stop with what we have
                break
            alpha = rr / curvature
            p, r = _axpy(alpha, d, p), _axpy(-alpha, Hd, r)
            rr, rr_old = _dot(r, r), rr
            if rr < 1e-20:
                break
            d = _axpy(rr / rr_old, d, r)
        for name, step in p.items():
            net.set_parameter(name, net.parameters()[name] + step)
    losses.append(float(net.loss(net.forward(X), y)))
    return losses


def curvature(*, iterations: int = 30, newton_steps: int = 6, seed: int = 0) -> dict[str, list[float]]:
    """Both runs of both algorithms: "power_manual", "power_torch", "newton_manual", "newton_torch"."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations={iterations!r} must be an int >= 1")
    if isinstance(newton_steps, bool) or not isinstance(newton_steps, int) or newton_steps < 1:
        raise ValueError(f"newton_steps={newton_steps!r} must be an int >= 1")
    net, X, y = point(seed)
    out = {}
    for who, product in (("manual", manual_product(X, y)), ("torch", torch_product(X, y))):
        out[f"power_{who}"] = power_iteration(net, product, iterations, seed)
        out[f"newton_{who}"] = newton_cg(net.to(), X, y, product, newton_steps)  # each run from the same start
    return out


def plot(runs: dict[str, list[float]], path: Path) -> Path | None:
    """The eigenvalue estimates and the Newton-CG losses, manual over torch; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (pip install 'refbp[plot]')", file=sys.stderr)
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind, ylabel in ((left, "power", "lambda_k = v . H v"), (right, "newton", "J (mse)")):
        ax.plot(runs[f"{kind}_torch"], lw=4, alpha=0.4, label="torch double backward")
        ax.plot(runs[f"{kind}_manual"], lw=1.2, ls="--", color="black", label="refbp R-operator")
        ax.set_ylabel(ylabel)
        ax.legend()
    left.set_xlabel("power iteration")
    left.set_title("top Hessian eigenvalue")
    right.set_xlabel("Newton-CG step")
    right.set_yscale("log")
    right.set_title(f"Newton-CG, (H + {DAMPING:g} I) p = -g")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return write_atomic(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refbp.examples.curvature", description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30, help="power iterations (default 30)")
    parser.add_argument("--newton-steps", type=int, default=6, help="Newton-CG steps (default 6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="reports", help="folder for curvature.png and curvature.json")
    args = parser.parse_args(argv)
    try:
        runs = curvature(iterations=args.iterations, newton_steps=args.newton_steps, seed=args.seed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    top_m, top_t = runs["power_manual"][-1], runs["power_torch"][-1]
    print(
        f"top Hessian eigenvalue: {top_m:.12g} (manual H v), {top_t:.12g} (torch), differ by {abs(top_m - top_t):.2e}"
    )
    print(
        f"Newton-CG: J {runs['newton_manual'][0]:.4e} -> {runs['newton_manual'][-1]:.4e} in {args.newton_steps} steps"
    )
    gap = max(
        abs(m - t) / max(abs(t), 1e-300) for m, t in zip(runs["newton_manual"], runs["newton_torch"], strict=True)
    )
    print(f"largest relative difference of the Newton-CG losses, manual vs torch: {gap:.2e}")
    out = Path(args.out)
    write_atomic(out / "curvature.json", json.dumps(runs, indent=1) + "\n")
    written = plot(runs, out / "curvature.png")
    if written is not None:
        print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
