"""Two training runs side by side: refbp's manual gradients and torch.autograd's, their loss
curves and their difference, as the training examples (train_xor, train_gpt, train_cnn,
char_rnn) plot them and write them down."""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from ..apps.io import write_atomic, write_set

__all__ = [
    "ExampleParser",
    "TrainingCurves",
    "batches",
    "curves_json",
    "curves_png",
    "plot_curves",
    "run_example",
    "write_curves",
]


@dataclass(frozen=True)
class TrainingCurves:
    """J before each step, for both runs.

    Attributes:
        manual: refbp's forward/backward and the example's update.
        autograd: the same model in torch, J.backward(), torch's optimizer.
    """

    manual: list[float]
    autograd: list[float]

    @property
    def max_abs_difference(self) -> float:
        return max(abs(m - a) for m, a in zip(self.manual, self.autograd, strict=True))

    @property
    def max_rel_difference(self) -> float:
        """max_t |J_manual(t) - J_autograd(t)| / |J_autograd(t)|."""
        return max(abs(m - a) / abs(a) for m, a in zip(self.manual, self.autograd, strict=True))


def plot_curves(
    curves: TrainingCurves,
    path: str | Path,
    *,
    title: str,
    labels: tuple[str, str],
    ylabel: str,
    xlabel: str,
    log_y: bool = False,
) -> Path | None:
    """Both loss curves (``labels``: autograd's, manual's) and their relative difference as a
    PNG at ``path``; None (and a message) without matplotlib."""
    png = curves_png(curves, title=title, labels=labels, ylabel=ylabel, xlabel=xlabel, log_y=log_y)
    return None if png is None else write_atomic(path, png)


def curves_json(curves: TrainingCurves, **about: Any) -> str:
    """Both curves as JSON, with their largest differences and ``about`` (the run's settings)."""
    record = {
        **about,
        "manual": curves.manual,
        "autograd": curves.autograd,
        "max_abs_difference": curves.max_abs_difference,
        "max_rel_difference": curves.max_rel_difference,
    }
    return json.dumps(record, indent=1) + "\n"


def write_curves(
    folder: str | Path, stem: str, curves: TrainingCurves, png: bytes | None, about: Mapping[str, Any]
) -> list[Path]:
    """STEM.json (``curves_json``) and STEM.png (when there is a plot) in ``folder``, written
    together or not at all (refbp.apps.io.write_set)."""
    files: dict[str, str | bytes | None] = {f"{stem}.json": curves_json(curves, **about)}
    if png is not None:
        files[f"{stem}.png"] = png
    return write_set(folder, files)


def curves_png(
    curves: TrainingCurves, *, title: str, labels: tuple[str, str], ylabel: str, xlabel: str, log_y: bool = False
) -> bytes | None:
    """The PNG of ``plot_curves``, as bytes; None (and a message) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (pip install 'refbp[plot]')", file=sys.stderr)
        return None
    steps = range(len(curves.manual))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=[3, 2])
    top.plot(steps, curves.autograd, lw=4, alpha=0.4, label=labels[0])
    top.plot(steps, curves.manual, lw=1.2, ls="--", color="black", label=labels[1])
    if log_y:
        top.set_yscale("log")
    top.set_ylabel(ylabel)
    top.set_title(title)
    top.legend()
    difference = [abs(m - a) / abs(a) for m, a in zip(curves.manual, curves.autograd, strict=True)]
    bottom.plot(steps, [max(d, 1e-18) for d in difference], lw=0.8, color="tab:red")
    bottom.set_yscale("log")
    bottom.set_ylabel("|J_manual - J_autograd| / J")
    bottom.set_xlabel(xlabel)
    bottom.axhline(float(torch.finfo(torch.float64).eps), color="gray", ls=":", label="float64 eps")
    bottom.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


class ExampleParser(argparse.ArgumentParser):
    """The training examples' command line: a bad option is one ``error:`` line and exit
    status 2, as for ``refbp`` itself (``run_example``), instead of argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def run_example(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """``main(argv)``, with a ValueError (a bad option or setting) printed as one ``error:``
    line and exit status 2."""
    try:
        return main(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def batches(data: torch.Tensor, *, batch: int, length: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Random windows of the text, forever: idx (batch, length) and targets, the next characters."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        start = torch.randint(0, data.numel() - length - 1, (batch,), generator=generator)  # (B,)
        offsets = start.unsqueeze(1) + torch.arange(length)  # (B, T)
        yield data[offsets], data[offsets + 1]
