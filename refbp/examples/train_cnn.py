"""A tiny CNN trained twice from the same start on images refbp draws: with refbp's manual
gradients (Conv2d's im2col, MaxPool2d's argmax, by hand), and with torch.autograd on the same
network as a torch module (``Network.to_torch()``).

    python -m refbp.examples.train_cnn              # 150 steps; writes reports/train_cnn.png and .json
    python -m refbp.examples.train_cnn --steps 40 --seed 3 --out /tmp

The images are 8 x 8 pictures of four shapes, drawn at random places from ``--seed`` with a
little noise: a horizontal bar, a vertical bar, a cross and a square blob. Both runs see the
same batches and step with the same optimizer (torch.optim.SGD with momentum) in float64: only
where the gradients come from differs, so the two loss curves agree to float64 rounding.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.activations import ACTIVATIONS
from ..nn.layers import Conv2d, Elementwise, Flatten, Linear, MaxPool2d
from ..nn.network import Network
from ..nn.validation import check_int, check_seed
from .curves import ExampleParser, TrainingCurves, curves_png, run_example, write_curves

__all__ = ["BATCH", "CLASSES", "LEARNING_RATE", "SIZE", "STEPS", "CNNRun", "images", "main", "network", "train_cnn"]

CLASSES = ("horizontal bar", "vertical bar", "cross", "blob")
"""The shapes the images show, in class order."""

SIZE = 8
"""Images are SIZE x SIZE, one channel."""

STEPS = 150
"""SGD steps: enough for the loss to fall from about log 4 = 1.39 (a guess) to under 0.1 and
for every image to be classified right (seed 0), in about 10 seconds for both runs."""

BATCH = 32
"""Images per step, drawn from the set of 256."""

LEARNING_RATE = 0.05
"""SGD's step (momentum 0.9): from seed 0 the loss is under 0.1 after 150 steps, and the two
runs stay within a few float64 roundings of each other (with a much larger step training
jumps about, and any difference, a rounding included, grows step by step)."""

NOISE = 0.1
"""Standard deviation of the pixel noise added to every image."""


def _shape(kind: int, generator: torch.Generator) -> Tensor:
    """One SIZE x SIZE image of shape ``kind``, at a random place, without noise."""
    image = torch.zeros(SIZE, SIZE, dtype=torch.float64)

    def at(low: int, high: int) -> int:  # a position in [low, high]
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    if kind == 0:  # horizontal bar: one row, 4 to 6 pixels long
        length = at(4, 6)
        image[at(0, SIZE - 1), (start := at(0, SIZE - length)) : start + length] = 1.0
    elif kind == 1:  # vertical bar
        length = at(4, 6)
        image[(start := at(0, SIZE - length)) : start + length, at(0, SIZE - 1)] = 1.0
    elif kind == 2:  # cross: a plus sign with arms of 2
        r, c = at(2, SIZE - 3), at(2, SIZE - 3)
        image[r, c - 2 : c + 3] = 1.0
        image[r - 2 : r + 3, c] = 1.0
    else:  # blob: a filled 3 x 3 square
        r, c = at(0, SIZE - 3), at(0, SIZE - 3)
        image[r : r + 3, c : c + 3] = 1.0
    return image


def images(count: int = 256, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``count`` images X (count, 1, SIZE, SIZE) with noise, and their classes y (count,), from ``seed``."""
    check_int(count, "count", minimum=1, maximum=1 << 16)
    generator = torch.Generator().manual_seed(check_seed(seed, "seed"))
    y = torch.arange(count) % len(CLASSES)  # (count,) every class equally often
    X = torch.stack([_shape(int(k), generator) for k in y]).unsqueeze(1)  # (count, 1, SIZE, SIZE)
    noise = torch.randn(X.shape, dtype=torch.float64, generator=generator)
    return X + NOISE * noise, y


def network(seed: int = 0) -> Network:
    """Conv2d(1 -> 4, 3 x 3, padding 1) -> relu -> MaxPool2d(2) -> Flatten -> Linear(64 -> 4),
    cross-entropy; float64, initialised as torch.nn does (U(+-1/sqrt(fan_in))) from ``seed``."""
    generator = torch.Generator().manual_seed(seed)

    def drawn(*shape: int, fan_in: int) -> Tensor:
        bound = 1 / math.sqrt(fan_in)
        return torch.empty(shape, dtype=torch.float64).uniform_(-bound, bound, generator=generator)

    C_out, features = 4, 4 * (SIZE // 2) ** 2
    conv = Conv2d(drawn(C_out, 1, 3, 3, fan_in=9), drawn(C_out, fan_in=9), padding=1)
    head = Linear(drawn(len(CLASSES), features, fan_in=features), drawn(len(CLASSES), fan_in=features))
    return Network([conv, Elementwise(ACTIVATIONS["relu"]), MaxPool2d(2), Flatten(), head], "cross_entropy")


def _batches(count: int, *, seed: int) -> Iterator[Tensor]:
    """Indices of BATCH random images, forever, the same sequence for both runs."""
    generator = torch.Generator().manual_seed(seed + 1)
    while True:
        yield torch.randint(0, count, (BATCH,), generator=generator)  # (BATCH,)


@dataclass(frozen=True)
class CNNRun:
    """Both loss curves and what was trained.

    Attributes:
        curves: J before each step, refbp's manual gradients and torch.autograd's.
        net: the manually trained network, after the last step.
        accuracy: the share of the images the manually trained network classifies right.
    """

    curves: TrainingCurves
    net: Network
    accuracy: float


def train_cnn(*, steps: int = STEPS, lr: float = LEARNING_RATE, seed: int = 0) -> CNNRun:
    """Train ``network(seed)`` on ``images(seed=seed)`` twice from the same start."""
    check_int(steps, "steps", minimum=1, maximum=1 << 20)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr={lr!r} must be a positive step size")
    X, y = images(seed=seed)
    net = network(seed)
    module = net.to_torch()  # the same start, as a torch module with its own copy of the parameters

    def sgd(params: list[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=lr, momentum=0.9, foreach=False)

    # refbp: forward, loss and backward by hand; SGD reads the gradients from .grad
    params = net.parameters()  # the layers' own tensors: SGD updates them in place
    optimizer = sgd(list(params.values()))
    manual: list[float] = []
    for _, rows in zip(range(steps), _batches(len(y), seed=seed), strict=False):
        cache = net.forward(X[rows], keep_intermediates=False)
        manual.append(float(net.loss(cache, y[rows])))
        grads = net.backward(cache, y[rows], keep_intermediates=False, release_cache=True).as_dict()
        for name, p in params.items():
            p.grad = grads[name]
        optimizer.step()

    # torch: the module's forward, J.backward(), the same optimizer
    optimizer = sgd(list(module.parameters()))
    automatic: list[float] = []
    for _, rows in zip(range(steps), _batches(len(y), seed=seed), strict=False):
        optimizer.zero_grad()
        J = F.cross_entropy(module(X[rows]), y[rows])
        automatic.append(float(J.detach()))
        J.backward()
        optimizer.step()
    logits = net.forward(X, keep_intermediates=False).y_hat  # (256, 4)
    accuracy = float((logits.argmax(dim=1) == y).double().mean())
    return CNNRun(TrainingCurves(manual=manual, autograd=automatic), net, accuracy)


def main(argv: list[str] | None = None) -> int:
    parser = ExampleParser(prog="python -m refbp.examples.train_cnn", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--lr", type=float, default=LEARNING_RATE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="reports", help="folder for train_cnn.png and .json (default reports)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small tensors: one thread is faster on a shared machine
    run = train_cnn(steps=args.steps, lr=args.lr, seed=args.seed)
    curves = run.curves
    print(f"J at step 0: {curves.manual[0]:.4f}, after {args.steps} steps: {curves.manual[-1]:.4f} (manual); "
          f"{run.accuracy:.0%} of the 256 images classified right")  # fmt: skip
    print(f"largest difference between the curves: {curves.max_abs_difference:.3e} absolute, "
          f"{curves.max_rel_difference:.3e} relative (float64 eps = {torch.finfo(torch.float64).eps:.3e})")  # fmt: skip
    png = curves_png(
        curves, title="Tiny CNN (Conv2d 1->4 3x3, relu, MaxPool2d 2, Linear 64->4) on 8x8 bars, crosses, blobs",
        labels=("torch.autograd (Network.to_torch()) + SGD", "refbp manual gradients + SGD"),
        ylabel="J, cross-entropy", xlabel="SGD step (momentum 0.9, float64)",
    )  # fmt: skip
    about = {"example": "train_cnn", "steps": args.steps, "lr": args.lr, "seed": args.seed, "accuracy": run.accuracy}
    for path in write_curves(Path(args.out), "train_cnn", curves, png, about):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_example(main))
