"""``refbp explain`` for any network (refbp.apps.walk): every layer walked forward and backward,
each quantity checked against torch, and a wrong layer seen where it is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refbp.apps.cli import main
from refbp.apps.layer_bugs import LAYER_BUGS
from refbp.apps.walk import BUILT_IN, walk_network

STACK = {"input": 3, "layers": [["linear", 4], ["layernorm", {}], ["gelu"], ["linear", 2]], "loss": "mse", "seed": 2}
MLP = {"dims": [2, 3, 1], "activations": ["tanh", "sigmoid"], "loss": "bce", "seed": 1}


def test_the_built_in_walk_checks_every_layer_forward_and_backward_and_passes() -> None:
    case = BUILT_IN["layers"].build()
    w = walk_network(case.net, case.X, case.y)
    assert w.passed
    forward = [s for s in w.steps if s.phase == "forward"]
    backward = [s for s in w.steps if s.phase == "backward"]
    paths = [s.path for s in forward[:-1]]  # the last forward step is J
    assert paths == ["1", "2", "3", "4", "4.1", "4.2", "5", "6", "7"]  # the residual's inner layers too
    assert [s.path for s in backward] == paths[::-1]  # every layer once on the way back
    assert all(check is not None for s in forward for _, _, check in s.values)  # torch's verdict on each
    assert {check.reference for check in w.checks} == {"torch", "autograd"}


def test_a_wrong_layer_fails_the_walk_at_that_layer_and_below_not_above() -> None:
    case = BUILT_IN["layers"].build()
    bug = next(bug for bug in LAYER_BUGS if bug.name == "layernorm_no_statistic_paths")
    net = bug.rewire(case.net)  # layer 2's backward drops two paths
    w = walk_network(net, case.X, case.y)
    assert not w.passed
    assert all(check.verdict == "ok" for s in w.steps if s.phase == "forward" for _, _, check in s.values if check)
    failing = [
        s.path for s in w.steps if s.phase == "backward" and any(c and c.verdict != "ok" for _, _, c in s.values)
    ]
    assert failing == ["2", "1"]  # what layer 2 hands down (dJ/da1), and everything below it
    assert "✗" in w.render() and "[FAIL]" in w.render(ascii_only=True)


@pytest.mark.parametrize("spec", [STACK, MLP], ids=["stack", "mlp"])
def test_explain_spec_reads_a_file_and_explain_stack_the_same_json_inline(
    spec: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "net.json"
    path.write_text(json.dumps(spec))
    assert main(["explain", "--spec", str(path), "--ascii"]) == 0
    from_file = capsys.readouterr().out
    assert main(["explain", "--stack", json.dumps(spec), "--ascii"]) == 0
    assert capsys.readouterr().out == from_file
    assert "[FAIL]" not in from_file and "agree with torch" in from_file.split("=" * 80)[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--spec", "missing.json"], "--spec missing.json: no such file"),
        (["--stack", "[1, 2]"], "--stack: expected a JSON object"),
        (["--stack", "{"], "--stack: not valid JSON"),
        (["--stack", '{"input": 3, "layers": [["conv", 2]], "loss": "mse"}'], "--stack: "),
        (["--stack", json.dumps(STACK), "--model", "layers"], "--stack and --model: give one network"),
    ],
)
def test_a_bad_network_option_exits_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_the_gpt_walk_visits_embeddings_every_sub_layer_of_the_block_and_the_tied_head(
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = BUILT_IN["gpt"]
    case = spec.build()
    w = walk_network(case.net, case.X, case.y)
    assert w.passed
    forward = [s.path for s in w.steps if s.phase == "forward"]
    assert forward == ["1", "2", "3", "4", *(f"4.{j}" for j in range(1, 9)), "5", "6", "J"]
    titles = {s.path: s.title for s in w.steps}
    assert titles["4.2"].startswith("CausalSelfAttention") and titles["1"].startswith("Embedding")
    assert main(["explain", "--model", "gpt", "--ascii"]) == 0
    out = capsys.readouterr().out
    assert "[FAIL]" not in out and "dJ/dE1" in out  # the tied weight: both uses summed into E


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "gpt", "--batch", "-5"], "--batch=-5 is out of range"),
        (["--model", "layers", "--batch", "0"], "--batch=0 is out of range"),
        (["--model", "gpt", "--loss", "mse"], "--loss mse: --model gpt is trained with cross_entropy"),
        (["--model", "layers", "--loss", "bce"], "--loss bce: --model layers is trained with mse"),
        (["--model", "layers", "--activations", "relu"], "--activations describes the seed's MLP"),
        (["--model", "gpt", "--dims", "2,3,1"], "--dims describes the seed's MLP"),
        (["--model", "gpt", "--layout", "columns"], "--layout describes the seed's MLP"),
        (["--model", "gpt", "--seed", "-1"], "--seed"),
        (["--model", "gpt", "--batch", "100000"], "--batch=100000 is out of range"),
        (["--stack", json.dumps(STACK), "--seed", "3"], "--seed: --stack carries its own seed"),
    ],
)
def test_every_option_the_chosen_model_cannot_take_exits_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_seed_and_batch_change_the_gpt_that_explain_walks(capsys: pytest.CaptureFixture[str]) -> None:
    outputs = []
    for extra in ([], ["--seed", "0"], ["--seed", "5"], ["--batch", "2"]):
        assert main(["explain", "--model", "gpt", "--ascii", *extra]) == 0
        outputs.append(capsys.readouterr().out)
    default, seed0, seed5, batch2 = outputs
    assert seed0 == default  # the built-in model's seed is 0
    assert seed5 != default and "[FAIL]" not in seed5
    assert "B=2" in batch2 and "B=1" in default
    spec = BUILT_IN["gpt"]
    case = type(spec).from_dict({**spec.to_dict(), "seed": 5}).build()
    expected = walk_network(case.net, case.X, case.y).render(ascii_only=True)
    tokens = next(line for line in expected.splitlines() if line.startswith("      ["))
    assert tokens in seed5  # the seed-5 model's own token indices, as drawn by its spec
