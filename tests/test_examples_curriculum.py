"""The curriculum's training examples: a tiny CNN (train_cnn) and a character-level LSTM
(char_rnn) trained with refbp's manual gradients follow the same networks trained with
torch.autograd step for step, and write their curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from refbp.examples import char_rnn, train_cnn
from refbp.examples.curves import run_example


@pytest.fixture(scope="module")
def cnn_run() -> train_cnn.CNNRun:
    return train_cnn.train_cnn(steps=12)


@pytest.fixture(scope="module")
def char_run() -> char_rnn.CharRun:
    return char_rnn.train_char_rnn(steps=12)


def test_cnn_manual_and_autograd_loss_curves_agree_to_float64_rounding(cnn_run: train_cnn.CNNRun) -> None:
    curves = cnn_run.curves
    assert len(curves.manual) == len(curves.autograd) == 12
    assert curves.max_rel_difference < 1e-13
    assert sum(curves.manual[-3:]) < sum(curves.manual[:3])  # it learns


def test_the_images_are_drawn_from_the_seed_every_class_equally_often() -> None:
    X, y = train_cnn.images(64, seed=1)
    again, _ = train_cnn.images(64, seed=1)
    other, _ = train_cnn.images(64, seed=2)
    assert X.shape == (64, 1, train_cnn.SIZE, train_cnn.SIZE) and X.dtype == torch.float64
    assert torch.equal(X, again) and not torch.equal(X, other)
    assert torch.bincount(y).tolist() == [16] * len(train_cnn.CLASSES)
    bright = (X > 0.5).sum(dim=(1, 2, 3)).double()  # a bar has 4-6 pixels, a cross 9, a blob 9
    assert bright[y <= 1].mean() < bright[y >= 2].mean()


def test_char_rnn_manual_and_autograd_loss_curves_agree_and_it_samples_its_own_characters(
    char_run: char_rnn.CharRun,
) -> None:
    curves = char_run.curves
    assert len(curves.manual) == len(curves.autograd) == 12
    assert curves.max_rel_difference < 1e-13
    assert curves.manual[-1] < curves.manual[0]
    text = char_rnn.sample(char_run, "Alice ", length=30, seed=1)
    assert text.startswith("Alice ") and len(text) == 36 and set(text) <= set(char_run.vocab)
    assert text == char_rnn.sample(char_run, "Alice ", length=30, seed=1)  # the seed decides the draws
    with pytest.raises(ValueError, match=r"prompt='Zebra' .* \['Z'\] are not"):
        char_rnn.sample(char_run, "Zebra")


@pytest.mark.parametrize("example", [train_cnn, char_rnn], ids=["train_cnn", "char_rnn"])
def test_each_example_runs_from_the_command_line_and_writes_its_curves(
    example: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = example.__name__.rsplit(".", 1)[-1]  # type: ignore[attr-defined]
    assert run_example(example.main, ["--steps", "3", "--seed", "1", "--out", str(tmp_path)]) == 0  # type: ignore[attr-defined]
    record = json.loads((tmp_path / f"{name}.json").read_text())
    assert len(record["manual"]) == len(record["autograd"]) == 3 and record["seed"] == 1
    assert record["max_rel_difference"] < 1e-13
    out = capsys.readouterr().out
    assert "largest difference between the curves" in out
    if name == "char_rnn":
        assert record["sample"].startswith("Alice ") and "sampled from the manually trained network" in out
    pytest.importorskip("matplotlib")
    assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.json", f"{name}.png"]  # no temporaries left


@pytest.mark.parametrize("example", [train_cnn, char_rnn], ids=["train_cnn", "char_rnn"])
@pytest.mark.parametrize(
    ("args", "message"),
    [(["--steps", "0"], "steps=0 is out of range"), (["--lr", "-1"], "lr=-1.0 must be a positive step size"),
     (["--steps", "many"], "argument --steps: invalid int value: 'many'"), (["--seed", "-3"], "seed=-3")],
)  # fmt: skip
def test_a_bad_option_is_one_error_line_and_exit_2(
    example: object, args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_example(example.main, [*args, "--out", str(tmp_path)]) == 2  # type: ignore[attr-defined]
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())
