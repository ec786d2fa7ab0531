"""Manual gradient descent with refbp's gradients follows torch.autograd + torch.optim.SGD on
the seed's network step for step: the two loss curves coincide to float64 round-off."""

from __future__ import annotations

from pathlib import Path

import pytest

from refbp.examples.train_xor import plot, train_xor


@pytest.fixture(scope="module")
def curves():  # type: ignore[no-untyped-def]
    return train_xor(steps=1200)


def test_manual_and_autograd_loss_curves_coincide_to_round_off(curves) -> None:  # type: ignore[no-untyped-def]
    assert len(curves.manual) == len(curves.autograd) == 1200
    assert curves.manual[0] == pytest.approx(curves.autograd[0], rel=1e-15)
    assert curves.max_rel_difference < 1e-12


def test_the_seed_network_learns_xor(curves) -> None:  # type: ignore[no-untyped-def]
    assert curves.manual[-1] < 0.05 * curves.manual[0]
    # J never rises by more than round-off from one step to the next at this step size
    assert all(b <= a * (1 + 1e-9) for a, b in zip(curves.manual, curves.manual[1:], strict=False))


def test_plot_is_a_png(curves, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    written = plot(curves, tmp_path / "training.png")
    assert written is not None and written.read_bytes().startswith(b"\x89PNG")


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"steps=0 must be an int >= 1"):
        train_xor(steps=0)
    with pytest.raises(ValueError, match=r"lr=-1\.0 must be a positive step size"):
        train_xor(lr=-1.0)
