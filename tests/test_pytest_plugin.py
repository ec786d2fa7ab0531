"""refbp's pytest plugin (issue 19): the refbp_check fixture passes what is verified and fails the
rest with the result's message and table; ``--refbp-report DIR`` writes one Markdown + JSON
report of every check in the session, also when pytest-xdist runs the tests in workers."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS = """
import torch
import torch.nn.functional as F
from refbp.verify.function_bugs import FUNCTION_BUGS
from refbp.verify.hand_functions import Tanh

torch.set_num_threads(1)
X = torch.linspace(-3, 3, 12).reshape(3, 4)


def test_correct_tanh(refbp_check):
    result = refbp_check(Tanh, X, reference=torch.tanh)
    assert result.passed


def test_tanh_from_input(refbp_check):
    refbp_check(FUNCTION_BUGS["tanh_from_input"].fn, X.bfloat16(), reference=torch.tanh)


def test_direct_call_without_the_fixture():
    import refbp
    assert refbp.check_autograd_function(Tanh, X, reference=torch.tanh).passed


def test_check_function(refbp_check):
    refbp_check(lambda p: ((p["w"] ** 2).sum(), {"w": 2 * p["w"]}), {"w": X.double()})
"""


def _plugin() -> list[str]:
    """``-p refbp.pytest_plugin`` unless refbp is installed with its pytest11 entry point (then
    pytest loads it already, and loading it twice is an error)."""
    installed = any(ep.name == "refbp" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "refbp.pytest_plugin"]


def _report(folder: Path) -> dict[str, object]:
    data = json.loads((folder / "refbp-report.json").read_text())
    assert isinstance(data, dict)
    return data


def test_refbp_check_fails_a_wrong_backward_with_its_table_and_the_report_lists_every_check(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_kernels=TESTS)
    out = tmp_path / "report"
    result = pytester.runpytest(*_plugin(), "--refbp-report", str(out), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        ["*dJ/dx vs reference: MISMATCH*", "*| dJ/d*| reference*", "*refbp: 4 checks reported*"]
    )
    report = _report(out)
    checks = report["checks"]
    assert isinstance(checks, list)
    by_test = {c["test"].split("::")[1]: c for c in checks}
    assert sorted(by_test) == [
        "test_check_function", "test_correct_tanh", "test_direct_call_without_the_fixture", "test_tanh_from_input",
    ]  # fmt: skip
    assert by_test["test_direct_call_without_the_fixture"]["kind"] == "check_autograd_function"
    assert by_test["test_correct_tanh"]["passed"] and by_test["test_correct_tanh"]["dtype"] == "float32"
    wrong = by_test["test_tanh_from_input"]
    assert not wrong["passed"] and wrong["verdicts"]["x"] == "mismatch" and wrong["dtype"] == "bfloat16"
    assert wrong["worst_margin"] > 1 and by_test["test_correct_tanh"]["worst_margin"] < 1
    assert by_test["test_check_function"]["kind"] == "check_function"
    assert wrong["test_outcome"] == "failed" and by_test["test_correct_tanh"]["test_outcome"] == "passed"
    assert report["summary"] == {"checks": 4, "passed": 3}
    assert "result" in wrong and "result" not in by_test["test_correct_tanh"]  # the whole result only when failed
    versions = report["versions"]
    assert isinstance(versions, dict) and {"refbp", "torch", "python"} <= set(versions)
    markdown = (out / "refbp-report.md").read_text()
    assert "3 of 4 checks verified." in markdown and "## FAILED test_kernels.py::test_tanh_from_input" in markdown
    assert sorted(p.name for p in out.iterdir()) == ["refbp-report.json", "refbp-report.md"]  # no temporaries


def test_without_the_option_no_report_is_written(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_kernels=TESTS)
    result = pytester.runpytest(*_plugin(), "-p", "no:cacheprovider", "-k", "correct")
    result.assert_outcomes(passed=1, deselected=3)
    assert "refbp:" not in result.stdout.str()
    assert not list(pytester.path.rglob("refbp-report.*"))


@pytest.mark.slow  # two worker processes import torch: about 8 s of CPU
def test_report_collects_the_checks_of_every_xdist_worker(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_kernels=TESTS)
    out = tmp_path / "report"
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # 3 processes: load only what is used
    plugins = ["-p", "xdist.plugin", "-p", "refbp.pytest_plugin", "-p", "no:cacheprovider"]
    result = pytester.runpytest_subprocess(*plugins, "-n", "2", "--refbp-report", str(out))
    result.assert_outcomes(passed=3, failed=1)
    checks = _report(out)["checks"]
    assert isinstance(checks, list) and len(checks) == 4
    assert [c["test"] for c in checks] == sorted(c["test"] for c in checks)  # one order whatever the workers'
    assert sorted(c["test_outcome"] for c in checks) == ["failed", "passed", "passed", "passed"]  # the controller's
