"""A character-level GPT trained with refbp's manual gradients follows the same GPT trained with
torch.autograd (GPT.to_torch()) step for step: the loss curves agree to float64 rounding."""

from __future__ import annotations

from pathlib import Path

import pytest

from refbp.examples.train_gpt import GPTRun, corpus, plot, train_gpt


@pytest.fixture(scope="module")
def run() -> GPTRun:
    return train_gpt(steps=40, n_embd=16, block_size=16, batch=4)


def test_manual_and_autograd_loss_curves_agree_to_float64_rounding(run: GPTRun) -> None:
    curves = run.curves
    assert len(curves.manual) == len(curves.autograd) == 40
    assert curves.max_rel_difference < 1e-13


def test_the_gpt_learns_refbp_s_own_text(run: GPTRun) -> None:
    text = corpus()
    assert "causal" in text and "nanoGPT" in text and len(run.vocab) == len(set(text))
    first, last = run.curves.manual[:5], run.curves.manual[-5:]
    assert sum(last) / 5 < 0.85 * sum(first) / 5


def test_plot_is_a_png(run: GPTRun, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    written = plot(run, tmp_path / "gpt_training.png")
    assert written is not None and written.read_bytes().startswith(b"\x89PNG")


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"steps=0 must be an int >= 1"):
        train_gpt(steps=0)
    with pytest.raises(ValueError, match=r"lr=0\.0 must be a positive step size"):
        train_gpt(lr=0.0)
