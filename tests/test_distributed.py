"""Data-parallel backprop by hand on real gloo ranks: forked processes with torchrun's environment
(tests/ranks.py), and torchrun itself for ``refbp distributed`` end to end.

Every test reaps every process it starts, also when it fails (run_ranks and torchrun kill what
is left at their deadline), and keeps torchrun's temporary folders in its own tmp_path.
refbp report under torchrun: tests/test_distributed_report.py."""

from __future__ import annotations

import ast
import contextlib
import copy
import functools
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from refbp.apps.cli import main
from refbp.apps.distributed_bugs import RECIPES
from refbp.apps.ranks import EXIT_RANK_FAILED
from refbp.distributed import verify as verify_module
from refbp.distributed.cases import DataParallelSpec, draw_specs
from refbp.distributed.data_parallel import data_parallel_gradients, train_step
from refbp.distributed.launch import Job, RankFailedError, joined, torchrun_launch
from refbp.distributed.recipe import RIGHT, World, shard_noise, simulate
from refbp.distributed.verify import check_on_ranks
from refbp.signals import Terminated
from refbp.testing import assert_gradients_close
from refbp.verify.cases import CaseSpec
from refbp.verify.stacks import StackSpec

from .ranks import LEAVING, run_ranks, torchrun
from .torchscript_call import ON_CALL, through_torchscript

TIMEOUT = 20.0
"""The process groups' timeout in these tests: no healthy test rank waits a second for another,
and a broken one fails the test in seconds, not torch's 30 minutes."""


def _group() -> Any:
    launch = torchrun_launch()
    assert launch is not None
    return joined(launch, timeout=TIMEOUT)


# ---- data-parallel gradients ---------------------------------------------------------------------
@pytest.mark.parametrize("world_size", [2, 3])
def test_all_reduced_manual_gradients_equal_one_process_autograd_and_ddp_on_uneven_shards(
    world_size: int, tmp_path: Path
) -> None:
    specs = draw_specs(seed=0, examples=6, world_size=world_size)

    def rank(r: int) -> Any:
        with _group() as job:
            return [check_on_ranks(job, spec, id=k) for k, spec in enumerate(specs, start=1)]

    run = run_ranks(rank, world_size, tmp_path)
    assert run.codes == [0] * world_size, run.output
    checks = run.values[0]
    assert run.values[1:] == [[None] * len(specs)] * (world_size - 1)
    for check in checks:
        assert check.passed, [row.message() for row in check.rows if row.verdict != "ok"]
    references = {row.reference for check in checks for row in check.rows}
    assert references == {"one process", "autograd", "DDP", *(f"rank {r}" for r in range(1, world_size))}
    assert any(0 in spec.shards for spec in specs) and any(spec.ignore for spec in specs)  # the hard cases
    assert any(spec.network.weight_decay for spec in specs) and any("dropout" in spec.describe() for spec in specs)


def _even_and_uneven_cases() -> list[DataParallelSpec]:
    mlp = CaseSpec((3, 4, 2), ("tanh", "identity"), "mse", seed=7, batch=4, weight_decay=0.1)
    layers = [["linear", 5], ["gelu"], ["layernorm"], ["dropout", 0.25], ["linear", 3]]
    stack = StackSpec.from_dict(
        {"input": 3, "layers": layers, "loss": "cross_entropy", "seed": 8, "batch": 4, "weight_decay": 0.1}
    )
    return [DataParallelSpec(mlp, (2, 2)), DataParallelSpec(mlp, (1, 3)), DataParallelSpec(stack, (1, 3), True)]


def test_every_recipe_on_real_ranks_computes_what_its_simulation_computes(tmp_path: Path) -> None:
    """The bug catalogue's simulation is the ranks' arithmetic: the same recipe between real
    all-reduces gives the same numbers (a recipe that all-reduces dJ/dX on uneven shards is
    refused on every rank, as no all-reduce could take it)."""
    specs, recipes = _even_and_uneven_cases(), [RIGHT, *RECIPES]

    def rank(r: int) -> Any:
        held: list[Any] = []
        with _group():
            for spec in specs:
                case = spec.build()
                noise = copy.deepcopy(case.net).forward(case.X, update_stats=False).noise
                rows = World(spec.shards, spec.shards, True).rows_of(r)
                for recipe in recipes:
                    try:
                        g = data_parallel_gradients(case.net, case.X[rows], case.y[rows],
                                                    noise=shard_noise(noise, rows), recipe=recipe)  # fmt: skip
                        held.append((g.J, g.params, g.dJ_dX))
                    except ValueError as err:
                        held.append(str(err))
        return held

    run = run_ranks(rank, 2, tmp_path)
    assert run.codes == [0, 0], run.output
    results = iter(zip(*run.values, strict=True))
    for spec in specs:
        case = spec.build()
        noise = copy.deepcopy(case.net).forward(case.X, update_stats=False).noise
        for recipe in recipes:
            on_ranks = next(results)
            if recipe.reduced_rows and len(set(spec.shards)) > 1:
                assert all("needs one shape on every rank" in str(held) for held in on_ranks)
                continue
            J, expected = simulate(recipe, case.net, case.X, case.y, spec.shards, noise=noise, keep_intermediates=False)
            (J0, params, _), (_, _, dJ_dX1) = on_ranks
            held = {**params, "X": torch.cat([on_ranks[0][2], dJ_dX1])}
            assert_gradients_close(held, expected)
            torch.testing.assert_close(J0, J)


def test_train_step_keeps_the_ranks_in_step_with_one_process_gradient_descent(tmp_path: Path) -> None:
    spec = CaseSpec((4, 6, 3), ("tanh", "identity"), "cross_entropy", seed=3, batch=7, weight_decay=0.1)
    shards, steps, lr = (2, 5), 5, 0.3

    def rank(r: int) -> Any:
        case = spec.build()
        rows = World(shards, shards, True).rows_of(r)
        with _group():
            for _ in range(steps):
                train_step(case.net, case.X[rows], case.y[rows], learning_rate=lr)
        return case.net.parameters()

    run = run_ranks(rank, 2, tmp_path)
    assert run.codes == [0, 0], run.output
    case = spec.build()
    for _ in range(steps):  # one process, the whole batch
        grads = case.net.backward(case.net.forward(case.X), case.y).as_dict()
        for name, W in case.net.parameters().items():
            case.net.set_parameter(name, W - lr * grads[name])
    for params in run.values:
        assert_gradients_close(params, case.net.parameters())
    for name in run.values[0]:
        assert torch.equal(run.values[0][name], run.values[1][name])  # bit for bit the same on every rank


def test_a_refused_shard_stops_every_rank_with_the_reason_and_no_wait(tmp_path: Path) -> None:
    case = CaseSpec((3, 2), ("identity",), "mse", seed=1, batch=4).build()

    def rank(r: int) -> Any:
        X = case.X[:2] if r == 0 else torch.zeros(2, 5, dtype=torch.float64)  # rank 1: the wrong width
        with _group():
            try:
                data_parallel_gradients(case.net, X, case.y[:2])
            except ValueError as err:
                return str(err)
        return "no error"

    run = run_ranks(rank, 2, tmp_path)
    assert run.codes == [0, 0] and run.seconds < TIMEOUT, run.output
    assert run.values[0] == "rank(s) 1 refused their shard (see their error)"
    assert run.values[1] == (
        "rank 1's shard: X must have shape (N, 3) = (N, d_0), got shape (2, 5), dtype float64, device cpu"
    )


# ---- the command ---------------------------------------------------------------------------------
def test_refbp_distributed_outside_torchrun_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert main(["distributed", "--out", "unused"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: refbp distributed runs on several processes: start it with")
    assert not Path("unused").exists()


def _command(args: list[str], rank: int) -> int:
    return main(args)


def test_bad_usage_on_ranks_is_said_once_by_rank_0(tmp_path: Path) -> None:
    commands = {
        "one rank": (1, ["distributed", "--out", str(tmp_path)], "WORLD_SIZE=1: a data-parallel check needs"),
        "examples": (2, ["distributed", "--examples", "0"], "--examples=0 is out of range"),
        "timeout": (2, ["distributed", "--timeout", "-1"], "--timeout=-1.0 is out of range"),
    }
    for what, (world_size, args, message) in commands.items():
        run = run_ranks(functools.partial(_command, args), world_size, tmp_path / what)
        assert run.values == [2] * world_size, (what, run.output)
        assert run.output[0].startswith("error: ") and message in run.output[0] and run.output[0].count("\n") == 1
        assert run.output[1:] == [""] * (world_size - 1), what


def test_refbp_distributed_on_three_ranks_writes_its_files_from_rank_0(tmp_path: Path) -> None:
    run = run_ranks(lambda r: main(["distributed", "--examples", "6", "--out", str(tmp_path / "out")]), 3,
                    tmp_path / "logs")  # fmt: skip
    assert run.values == [0, 0, 0], run.output
    assert run.output[0].startswith("refbp distributed: 6/6 networks passed on 3 ranks")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["DISTRIBUTED.json", "DISTRIBUTED.md"]
    doc = json.loads((tmp_path / "out" / "DISTRIBUTED.json").read_text())
    assert doc["schema"] == "refbp.distributed/1" and doc["settings"] == {"seed": 0, "examples": 6, "world_size": 3}
    assert doc["summary"]["failed"] == 0 and all(len(c["shards"]) == 3 for c in doc["cases"])
    text = (tmp_path / "out" / "DISTRIBUTED.md").read_text()
    assert "**ALL PASSED**: 6 / 6 networks on 3 ranks" in text and "(D4)" in text and "BatchNorm" in text


@pytest.mark.slow
def test_torchrun_runs_the_data_parallel_check(tmp_path: Path) -> None:
    job = torchrun(["--nproc-per-node=3", "-m", "refbp", "distributed", "--examples", "4", "--out",
                    str(tmp_path / "dp")], tmp_path)  # fmt: skip
    assert job.returncode == 0 and not job.left_behind, job.stderr
    assert "4/4 networks passed on 3 ranks" in job.stdout
    assert sorted(p.name for p in (tmp_path / "dp").iterdir()) == ["DISTRIBUTED.json", "DISTRIBUTED.md"]


# ---- the house --------------------------------------------------------------------------------------
def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, as an absolute name."""
    package = "refbp.distributed"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            found |= {arg.value for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)}
    return found


def test_distributed_imports_nothing_from_the_command_line_floor() -> None:
    """refbp.distributed sits beside refbp.apps, not above it: what both need (the sweep's cases,
    the progress bar) lives a floor down (refbp.verify.sweep, refbp.progress)."""
    folder = Path(__file__).parents[1] / "refbp" / "distributed"
    reaching_up = {
        path.name: sorted(m for m in _imported_modules(path) if m == "refbp.apps" or m.startswith("refbp.apps."))
        for path in sorted(folder.glob("*.py"))
    }
    assert {name: found for name, found in reaching_up.items() if found} == {}
    assert "refbp.verify.sweep" in _imported_modules(folder / "sharded_report.py")  # the scan sees relative imports


def test_a_rank_stopped_during_refbp_distributed_is_the_fault_exit_not_a_failed_check(tmp_path: Path) -> None:
    """Rank 1 stops (SIGSTOP) inside its third network: rank 0's all-reduce times out in gloo,
    which must come out as the lost-rank exit (3) with one line naming rank 1, within the
    timeout of the stop, not as gloo's traceback and exit 1 ("a check failed")."""
    timeout = 4.0
    stopped, ended = tmp_path / "stopped", tmp_path / "ended"

    def rank(r: int) -> int:
        if r == 1:
            real, calls = verify_module.data_parallel_gradients, []

            def stopping(*args: Any, **kwargs: Any) -> Any:
                calls.append(1)
                if len(calls) == 3:
                    stopped.write_text(repr(time.monotonic()))
                    os.kill(os.getpid(), signal.SIGSTOP)
                return real(*args, **kwargs)

            verify_module.data_parallel_gradients = stopping
        code = main(["distributed", "--examples", "40", "--timeout", str(timeout), "--out", str(tmp_path / "out")])
        if r == 0:
            ended.write_text(repr(time.monotonic()))
        return code

    run = run_ranks(rank, 2, tmp_path / "logs", like_torchrun=True)
    assert run.values[0] == EXIT_RANK_FAILED and "Traceback" not in run.output[0], run.output[0]
    errors = [line for line in run.output[0].splitlines() if line.startswith("error: ")]
    assert errors == ["error: network 3: rank 1 gave no sign of life for 2 s (stopped, or died)"], run.output[0]
    seconds = float(ended.read_text()) - float(stopped.read_text())
    assert 0 < seconds <= timeout + LEAVING, seconds  # without the fix: gloo's traceback, exit 1
    assert not (tmp_path / "out").exists()


class _StoreThatHoldsItsCheck:
    """The job's store, whose ``check`` returns only after the heartbeat has tripped the
    interrupt: the interrupt then lands inside the store call, deterministically (in the CI run
    it once did by chance). Every other call is the real store's."""

    def __init__(self, store: Any, told: Any) -> None:
        self._store, self._told = store, told

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def check(self, keys: list[str]) -> bool:
        while not self._told():
            time.sleep(0.01)
        time.sleep(0.5)  # the main thread runs the interrupt's handler here, within the call
        return bool(self._store.check(keys))


@contextlib.contextmanager
def _job_whose_rank_1_dies(r: int) -> Iterator[Job]:
    """Rank r's part of a 2-rank job (timeout 4 s, so a silence of 2 s) in which rank 1 is killed
    (SIGKILL) as soon as it has joined: the block runs on rank 0 alone."""
    launch = torchrun_launch()
    assert launch is not None
    with joined(launch, timeout=4.0) as job:
        if r == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        yield job


def _verdict_held_back(job: Job) -> Callable[[], object]:
    """Hold back the heartbeat's trip until it has heard of rank 1's death, and return the trip,
    for the test to let it land where it wants."""
    trip, held = job.heart.on_verdict, threading.Event()
    assert trip is not None
    job.heart.on_verdict = held.set  # the heartbeat's trip, held back
    assert held.wait(30), "the heartbeat heard nothing of rank 1"
    return trip


def test_the_heartbeats_verdict_is_not_swallowed_by_a_guard_around_a_store_call(tmp_path: Path) -> None:
    """The heartbeat stops the main thread wherever it stands. Where that is inside a store call
    whose ``except RuntimeError`` guards against a store that cannot answer (the barrier's look
    at who arrived), the verdict must still end the barrier, naming the silent rank. It was a
    RuntimeError, swallowed there: the barrier went on to gloo, which said rank 1's "connection
    closed" (1 CI run of the sharded report)."""

    def rank(r: int) -> str:
        try:
            with _job_whose_rank_1_dies(r) as job:
                job.store = _StoreThatHoldsItsCheck(job.store, lambda: job.heart._told)  # type: ignore[assignment]
                job.barrier("the meeting")
        except RankFailedError as err:
            return str(err)
        return "the barrier passed"

    run = run_ranks(rank, 2, tmp_path / "logs")
    assert run.codes[1] == -9, run.output
    assert run.values[0] == "the meeting: rank 1 gave no sign of life for 2 s (stopped, or died)", run.output


def test_a_stop_on_its_way_is_not_replaced_by_the_heartbeats_verdict(tmp_path: Path) -> None:
    """torchrun's SIGTERM (Terminated) and the heartbeat's verdict on the rank that died come
    close together. Where the verdict's interrupt lands while the stop unwinds (here in a
    ``finally``; in 1 CI run at the start of a with-block's __exit__, past the block's edge,
    where it escaped as a traceback), the stop must go on: the rank says "terminated", once."""

    def rank(r: int) -> str:
        try:
            with _job_whose_rank_1_dies(r) as job:
                trip = _verdict_held_back(job)
                try:
                    raise Terminated("signal SIGTERM")
                finally:
                    trip()  # the trip lands while the stop unwinds
                    time.sleep(0.1)  # the main thread runs the pending handler after this call
        except Terminated:
            return "terminated"
        except RankFailedError as err:
            return f"RankFailedError: {err}"
        return "no error"

    run = run_ranks(rank, 2, tmp_path / "logs")
    assert run.codes[1] == -9, run.output
    assert run.values[0] == "terminated", run.output


def test_the_heartbeats_verdict_inside_torchscript_still_names_the_lost_rank(tmp_path: Path) -> None:
    """The verdict's interrupt may land in Python code that torch's TorchScript interpreter called
    (a scripted decomposition of a jvp, in a sweep's second-order case); the interpreter hands what
    the handler raised on as a RuntimeError. The block's edge must still see the verdict: a
    RankFailedError naming rank 1, not the interpreter's RuntimeError."""

    def rank(r: int) -> str:
        try:
            with _job_whose_rank_1_dies(r) as job:
                trip = _verdict_held_back(job)
                ON_CALL[0] = trip  # the trip lands inside the interpreter's call into Python
                through_torchscript(torch.ones(2))
        except RankFailedError as err:
            return f"RankFailedError: {err}"
        except BaseException as err:
            return f"{type(err).__name__}: {str(err)[:200]}"
        return "no error"

    run = run_ranks(rank, 2, tmp_path / "logs")
    assert run.codes[1] == -9, run.shown()
    named = "RankFailedError: the job: rank 1 gave no sign of life for 2 s (stopped, or died)"
    assert run.values[0] == named, run.shown()
