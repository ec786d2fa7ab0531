"""A character-level GPT trained twice from the same start: with refbp's manual gradients, and
with torch.autograd on the same model as a torch module (``GPT.to_torch()``, nanoGPT's layout).

    python -m refbp.examples.train_gpt              # 300 steps; writes reports/gpt_training.png
    python -m refbp.examples.train_gpt --steps 100 --out /tmp

The text is refbp's own: the docstrings of the modules that build the GPT, read from the
installed package (nothing copied from elsewhere). Both runs see the same batches and take their
steps with the same optimizer, torch.optim.AdamW, in float64: only where the gradients come
from differs, so the two loss curves agree to float64 rounding.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.gpt import GPT
from .curves import TrainingCurves, batches, plot_curves

__all__ = ["LEARNING_RATE", "STEPS", "TEXT_MODULES", "GPTRun", "batches", "corpus", "main", "plot", "train_gpt"]

TEXT_MODULES = (
    "refbp.models.gpt", "refbp.nn.attention", "refbp.nn.transformer", "refbp.nn.position", "refbp.nn.layernorm",
    "refbp.nn.linear", "refbp.nn.embedding", "refbp.nn.losses", "refbp.nn.network", "refbp.nn.stack",
)  # fmt: skip
"""The modules whose docstrings make the training text (about 15,000 characters)."""

STEPS = 300
"""Optimizer steps: enough for the loss to fall from log(V) (about 4.2, a uniform guess) to
well under half of it on this text."""

LEARNING_RATE = 3e-3
"""AdamW's step. At 1e-2 this model trains faster but unstably (the loss jumps back up every few
dozen steps), and there any difference, a rounding included, grows step by step: the two curves
part after about 50 steps. At 3e-3 they stay within 1e-15 of each other for all 300 steps."""


def corpus() -> str:
    """The training text: the docstrings of TEXT_MODULES, one after another."""
    return "\n\n".join(inspect.getdoc(importlib.import_module(name)) or "" for name in TEXT_MODULES)


@dataclass(frozen=True)
class GPTRun:
    """Both loss curves, and what they were trained on.

    Attributes:
        curves: J before each step, refbp's manual gradients and torch.autograd's.
        vocab: the characters, in token order.
        net: the manually trained GPT, after the last step.
    """

    curves: TrainingCurves
    vocab: str
    net: GPT


def train_gpt(
    *,
    steps: int = STEPS,
    n_layer: int = 2,
    n_head: int = 2,
    n_embd: int = 32,
    block_size: int = 32,
    batch: int = 8,
    lr: float = LEARNING_RATE,
    seed: int = 0,
) -> GPTRun:
    """Train a character-level GPT (nanoGPT's initialisation, float64) twice from the same start."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an int >= 1")
    if not lr > 0:
        raise ValueError(f"lr={lr!r} must be a positive step size")
    text = corpus()
    vocab = "".join(sorted(set(text)))
    data = torch.tensor([vocab.index(c) for c in text], dtype=torch.int64)  # (N,) the text as tokens
    net = GPT.random(vocab_size=len(vocab), block_size=block_size, n_layer=n_layer, n_head=n_head,
                     n_embd=n_embd, seed=seed, dtype=torch.float64)  # fmt: skip
    module = net.to_torch()  # the same start, as a torch module with its own copy of the parameters

    def adamw(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0, foreach=False)

    # refbp: forward, loss and backward by hand; AdamW reads the gradients from .grad
    names = [name for name in net.state_dict() if name != "lm_head.weight"]  # the tied weight once
    params = [net.state_dict()[name] for name in names]
    optimizer = adamw(params)
    manual: list[float] = []
    for _, (idx, targets) in zip(range(steps), batches(data, batch=batch, length=block_size, seed=seed), strict=False):
        cache = net.forward(idx, keep_intermediates=False)
        manual.append(float(net.loss(cache, targets)))
        grads = net.backward(cache, targets, keep_intermediates=False, release_cache=True).state_dict()
        for name, p in zip(names, params, strict=True):
            p.grad = grads[name]
        optimizer.step()  # updates the GPT's own parameters in place

    # torch: the module's forward, J.backward(), the same optimizer
    optimizer = adamw(list(module.parameters()))
    automatic: list[float] = []
    for _, (idx, targets) in zip(range(steps), batches(data, batch=batch, length=block_size, seed=seed), strict=False):
        optimizer.zero_grad()
        _, J = module(idx, targets)
        assert J is not None
        automatic.append(float(J.detach()))
        J.backward()
        optimizer.step()
    return GPTRun(TrainingCurves(manual=manual, autograd=automatic), vocab, net)


def plot(run: GPTRun, path: str | Path) -> Path | None:
    """Both loss curves and their relative difference as a PNG; None (and a message) without matplotlib."""
    c = run.net.config
    return plot_curves(
        run.curves, path, title=f"Character-level GPT ({c.n_layer} layers, n_embd {c.n_embd}, vocab {c.vocab_size}) "
        "on refbp's docs", labels=("torch.autograd (GPT.to_torch()) + AdamW", "refbp manual gradients + AdamW"),
        ylabel="J, cross-entropy per character", xlabel="AdamW step (float64)",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refbp.examples.train_gpt", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--lr", type=float, default=LEARNING_RATE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="reports", help="folder for gpt_training.png (default reports)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small tensors: one thread is faster on a shared machine
    run = train_gpt(steps=args.steps, lr=args.lr, seed=args.seed)
    curves = run.curves
    print(f"text: {len(corpus())} characters of refbp's docstrings, vocabulary of {len(run.vocab)}")
    print(f"J at step 0: {curves.manual[0]:.4f}, after {args.steps} steps: {curves.manual[-1]:.4f} (manual)")
    print(f"largest difference between the curves: {curves.max_abs_difference:.3e} absolute, "
          f"{curves.max_rel_difference:.3e} relative (float64 eps = {torch.finfo(torch.float64).eps:.3e})")  # fmt: skip
    written = plot(run, Path(args.out) / "gpt_training.png")
    if written is not None:
        print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
