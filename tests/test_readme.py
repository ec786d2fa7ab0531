"""Every Python example of the README runs as written.

Each ```python block of README.md is executed unchanged, in a namespace that holds the names it
uses without defining them (the X, y, W1 a reader brings), made to fit that block. A block
this module has no namespace for fails: a new example gets its inputs here, and so is run.
The failure the README shows is the failure the code gives."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import settings

import refbp

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(language: str) -> list[str]:
    """The bodies of the README's fenced blocks opened with ```language (```: no language)."""
    blocks: list[str] = []
    body: list[str] = []
    inside: str | None = None
    for line in README.read_text().splitlines():
        if inside is None and line.startswith("```"):
            inside, body = line[3:].strip(), []
        elif inside is not None and line.startswith("```"):
            if inside == language:
                blocks.append("\n".join(body) + "\n")
            inside = None
        elif inside is not None:
            body.append(line)
    return blocks


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _mlp_api() -> dict[str, Any]:
    """The MLP section: a 4-16-3 network's parameters and a batch of 5."""
    return {
        "W1": _randn(16, 4, seed=1), "b1": _randn(16, seed=2), "W2": _randn(3, 16, seed=3), "b2": _randn(3, seed=4),
        "X": _randn(5, 4, seed=5), "y": _randn(5, 3, seed=6),
    }  # fmt: skip


def _from_torch() -> dict[str, Any]:
    """The layers section: 6 rows of 4 tokens from 50, 5 classes."""
    g = torch.Generator().manual_seed(0)
    return {"idx": torch.randint(0, 50, (6, 4), generator=g), "y": torch.randint(0, 5, (6,), generator=g)}


def _gpt() -> dict[str, Any]:
    """The GPT section: an independent nanoGPT-style module (tests/nanogpt_reference.py)."""
    from tests import nanogpt_reference as ref

    torch.manual_seed(0)
    config = ref.Config(block_size=8, vocab_size=65, n_layer=1, n_head=4, n_embd=16, dropout=0.0, bias=True)
    g = torch.Generator().manual_seed(1)
    return {
        "nanogpt_model": ref.GPT(config).double(),
        "idx": torch.randint(0, 65, (2, 8), generator=g),
        "targets": torch.randint(0, 65, (2, 8), generator=g),
    }


def _verify() -> dict[str, Any]:
    """The verifying section: a network, its point, a user's gradients, loss and function."""
    net = refbp.MLP.random([3, 4, 2], activations=["tanh", "identity"], loss="mse", seed=3)
    X, y = _randn(5, 3, seed=1), _randn(5, 2, seed=2)
    cache = net.forward(X)

    def fn(params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        w = params["w"]
        return float((w**2).sum()), {"w": 2 * w}

    return {
        "net": net, "X": X, "y": y, "mine": net.backward(cache, y).as_dict(), "my_loss": float(net.loss(cache, y)),
        "fn": fn, "params": {"w": _randn(3, seed=4)},
    }  # fmt: skip


def _layouts() -> dict[str, Any]:
    """The layouts example: 3-3-3 so that one set of names fits rows and columns alike (N = 3)."""
    names: dict[str, Any] = {
        "W1": _randn(3, 3, seed=1),
        "W2": _randn(3, 3, seed=2),
        "b1": _randn(3, seed=3),
        "b2": _randn(3, seed=4),
    }
    X, y = _randn(3, 3, seed=5), _randn(3, 3, seed=6)
    net = refbp.MLP.from_params(
        weights=[names["W1"], names["W2"]], biases=[names["b1"], names["b2"]],
        activations=["relu", "identity"], loss="mse", layout="in_out",
    )  # fmt: skip
    g = net.backward(net.forward(X), y).as_dict()
    names.update({"dW1": g["W1"], "db1": g["b1"], "dW2": g["W2"], "db2": g["b2"], "dX": g["X"], "X": X, "y": y})
    names["mine"] = {"W1": g["W1"], "X": g["X"]}
    return names


def _strategies() -> dict[str, Any]:
    """The pytest example: ``my_backprop`` is refbp's own backward pass, as a user's would be."""

    def my_backprop(case: Any) -> dict[str, torch.Tensor]:
        return dict(case.net.backward(case.net.forward(case.X), case.y).as_dict())

    return {"my_backprop": my_backprop}


NAMESPACES: list[tuple[str, Callable[[], dict[str, Any]]]] = [
    ("# course style: h = x @ W + b", _layouts),
    ("net = refbp.MLP.from_params(weights=[W1, W2]", _mlp_api),
    ("net = refbp.from_torch(nn.Sequential(nn.Embedding(50, 16)", _from_torch),
    ("net = GPT.from_state_dict(nanogpt_model.state_dict()", _gpt),
    ("res = refbp.check(net, X, y)", _verify),
    ("net = refbp.MLP.random([3, 4, 2]", dict),
    ("refbp.check_autograd_function(FusedCrossEntropy", dict),
    ("from hypothesis import given", _strategies),
]
"""A line of a block -> the names the block uses without defining them (the first match counts)."""


def _namespace(block: str) -> dict[str, Any]:
    for start, make in NAMESPACES:
        if start in block:
            return {"torch": torch, "refbp": refbp, **make()}
    raise AssertionError(f"no namespace for this README example; give it one in NAMESPACES:\n{block}")


@pytest.mark.parametrize("block", _blocks("python"), ids=lambda block: block.strip().splitlines()[0][:40])
def test_readme_example_runs_as_written(block: str) -> None:
    namespace = _namespace(block)
    expected_failure = "raise_if_failed()" in block and "mine[" in block and "/ 5" in block
    if expected_failure:  # the README's example of a failure message
        with pytest.raises(refbp.GradientMismatchError) as failure:
            exec(compile(block, "<a README.md example>", "exec"), namespace)
        shown = next(text for text in _blocks("") if "gradients failed" in text)
        assert str(failure.value).strip() == shown.strip()
        return
    exec(compile(block, "<a README.md example>", "exec"), namespace)
    for name, value in list(namespace.items()):
        if name.startswith("test_") and callable(value):
            settings(max_examples=10)(value)()  # a hypothesis test the example defines: a few draws


def test_every_example_is_run() -> None:
    """Seven examples today: none is dropped by the block pattern."""
    assert len(_blocks("python")) >= 7
