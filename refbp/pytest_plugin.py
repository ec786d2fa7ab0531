"""refbp's pytest plugin: a ``refbp_check`` fixture, and ``pytest --refbp-report DIR``, which
writes one Markdown + JSON validation report of every refbp check made in the session.

    def test_my_kernel(refbp_check):
        refbp_check(MyFusedCE, logits.bfloat16(), target, reference=F.cross_entropy)

    pytest --refbp-report reports/     # reports/refbp-report.md and reports/refbp-report.json

``refbp_check(target, *args, **options)`` runs ``refbp.check`` for a refbp network,
``refbp.check_function`` for ``fn, params`` (params a dict), and
``refbp.check_autograd_function`` otherwise; records the result under the test's node id; and
fails the test with the result's failure message and table unless every tensor was verified.
Checks a test makes without the fixture are recorded too, when they report to
refbp.verify.observers (``check_autograd_function`` does).

Installed with refbp as a ``pytest11`` entry point (``refbp``); without the package installed,
``pytest -p refbp.pytest_plugin``. Under pytest-xdist each worker hands its records to the
controller (``workeroutput``), which writes the one report when the session ends, atomically
(refbp.apps.io.write_set). The checks themselves (and torch) are imported on the first
fixture call, not when pytest starts, so projects that never use them pay nothing for the plugin.
"""

from __future__ import annotations

import json
import math
import platform
import sys
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .verify.result import CheckResult

__all__ = ["REPORT_JSON", "REPORT_MARKDOWN", "RefbpCheck", "refbp_check"]

REPORT_JSON = "refbp-report.json"
"""The JSON report's file name in the --refbp-report folder."""

REPORT_MARKDOWN = "refbp-report.md"
"""The Markdown report's file name in the --refbp-report folder."""

REPORT_FORMAT = "refbp.pytest-report/1"
"""The JSON report's ``format`` field, bumped when its layout changes."""

_WORKER_KEY = "refbp_records"
"""The key of a worker's records (a JSON list) in xdist's ``workeroutput``."""


class _Session:
    """This process's records, the test running now, and whether the fixture is recording itself."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.test = "(outside a test)"
        self.in_fixture = False
        self.remove: Callable[[], None] = lambda: None
        self.outcomes: dict[str, str] = {}  # test -> "passed", "failed" or "skipped" (the controller's view)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Each test's outcome (a hook: this object is registered as a plugin), for the report:
        a check that fails in a test that expects it to is no failure of the suite."""
        if report.when == "call" or report.outcome != "passed":
            self.outcomes[report.nodeid] = report.outcome

    def observe(self, kind: str, result: CheckResult) -> None:
        """refbp.verify.observers' callback: a check made anywhere in the session."""
        if not self.in_fixture:  # the fixture records its own, once
            self.records.append(_record(self.test, kind, result))


_SESSION = pytest.StashKey[_Session]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("refbp", "refbp gradient checks")
    group.addoption(
        "--refbp-report",
        metavar="DIR",
        default=None,
        help="write refbp-report.md and refbp-report.json (every refbp check of the session) into DIR",
    )


def pytest_configure(config: pytest.Config) -> None:
    from .verify.observers import add_observer  # no torch: the registry alone

    state = _Session()
    state.remove = add_observer(state.observe)
    config.stash[_SESSION] = state
    config.pluginmanager.register(state, "refbp-session")


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_SESSION, None)
    if state is not None:
        state.remove()  # an in-process inner session (pytester) stops listening when it ends


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, None]:
    state = item.config.stash[_SESSION]
    state.test = item.nodeid
    yield
    state.test = "(outside a test)"


class RefbpCheck:
    """The ``refbp_check`` fixture's value: call it to check, record and assert (module docstring)."""

    def __init__(self, state: _Session) -> None:
        self.state = state
        self.results: list[CheckResult] = []

    def __call__(self, target: Any, *args: Any, **options: Any) -> CheckResult:
        from .nn.network import Network  # on first use: see the module docstring
        from .verify.autograd_function import check_autograd_function
        from .verify.check import check, check_function

        self.state.in_fixture = True
        try:
            if isinstance(target, Network):
                kind, result = "check", check(target, *args, **options)
            elif len(args) == 1 and isinstance(args[0], Mapping):
                kind, result = "check_function", check_function(target, args[0], **options)
            else:
                kind, result = "check_autograd_function", check_autograd_function(target, *args, **options)
        finally:
            self.state.in_fixture = False
        self.results.append(result)
        self.state.records.append(_record(self.state.test, kind, result))
        if not result.passed:
            from .verify.result import GradientMismatchError

            error = GradientMismatchError(result)
            error.args = (f"{result.failure_message()}\n\n{result.table()}",)
            raise error
        return result


@pytest.fixture
def refbp_check(request: pytest.FixtureRequest) -> RefbpCheck:
    """Check gradients with refbp, record the result for --refbp-report, fail unless verified."""
    return RefbpCheck(request.config.stash[_SESSION])


def _record(test: str, kind: str, result: CheckResult) -> dict[str, Any]:
    """One check as the report keeps it, JSON-ready: its verdicts and every row's margin; the
    whole result and its table only when it failed (a suite may make thousands of checks)."""
    margins = [row.margin for row in result.rows]
    worst = max(margins, default=0.0)
    function = result.meta.get("function")
    record = {
        "test": test,
        "kind": kind,
        "function": function if isinstance(function, str) else None,
        "passed": result.passed,
        "dtype": result.dtype,
        "device": result.device,
        "verdicts": {t.name: t.verdict for t in result.tensors},
        "worst_margin": _number(worst),
        "rows": [
            {"name": row.name, "reference": row.reference, "verdict": row.verdict, "margin": _number(row.margin)}
            for row in result.rows
        ],
    }
    if not result.passed:
        record["result"] = result.to_dict()
        record["table"] = result.table()
        record["message"] = result.failure_message()
    return record


def _number(x: float) -> float | str:
    """A float for JSON: inf and NaN as strings (JSON has neither)."""
    return x if math.isfinite(x) else str(x)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist, on the controller: a worker finished; keep the records it sent."""
    sent = getattr(node, "workeroutput", {}).get(_WORKER_KEY)
    if sent:
        node.config.stash[_SESSION].records.extend(json.loads(sent))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    state = config.stash.get(_SESSION, None)
    records = state.records if state is not None else []
    if hasattr(config, "workerinput"):  # an xdist worker: the controller writes the report
        config.workeroutput[_WORKER_KEY] = json.dumps(records)  # type: ignore[attr-defined]
        return
    folder = config.getoption("refbp_report")
    if folder:
        from .apps.io import write_set

        records = sorted(records, key=lambda r: r["test"])  # the same report whatever the workers' order
        outcomes = state.outcomes if state is not None else {}
        for r in records:
            r["test_outcome"] = outcomes.get(r["test"], "")
        report = _report(records)
        write_set(folder, {REPORT_JSON: json.dumps(report, indent=2) + "\n", REPORT_MARKDOWN: _markdown(report)})


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    folder = config.getoption("refbp_report")
    if folder and not hasattr(config, "workerinput"):
        state = config.stash.get(_SESSION, None)
        n = len(state.records) if state is not None else 0
        terminalreporter.write_line(f"refbp: {n} checks reported in {folder}/{REPORT_MARKDOWN} and {REPORT_JSON}")


def _report(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": REPORT_FORMAT,
        "versions": _versions(),
        "summary": {"checks": len(records), "passed": sum(r["passed"] for r in records)},
        "checks": records,
    }


def _versions() -> dict[str, str]:
    from .version import __version__

    versions = {"refbp": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    torch = sys.modules.get("torch")  # loaded if any check ran
    if torch is not None:
        versions["torch"] = str(torch.__version__)
    versions["pytest"] = pytest.__version__
    return versions


def _markdown(report: dict[str, Any]) -> str:
    summary, versions = report["summary"], report["versions"]
    lines = [
        "# refbp validation report",
        "",
        f"{summary['passed']} of {summary['checks']} checks verified.",
        "",
        "Versions: " + ", ".join(f"{name} {value}" for name, value in versions.items()),
        "",
        "A check that fails in a test that passed was expected to fail (a test of a bug's detection).",
        "",
        "| test | test outcome | check | dtype | device | verdicts | worst margin | verified |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["checks"]:
        verdicts = ", ".join(f"{name}: {verdict}" for name, verdict in r["verdicts"].items())
        margin = r["worst_margin"] if isinstance(r["worst_margin"], str) else f"{r['worst_margin']:.3g}"
        what = r["kind"] + (f" ({r['function']})" if r["function"] else "")
        cells = [
            r["test"],
            r.get("test_outcome", ""),
            what,
            r["dtype"],
            r["device"],
            verdicts,
            margin,
            "yes" if r["passed"] else "**no**",
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    for r in report["checks"]:
        if not r["passed"]:  # what failed, and why: the message and the rows
            title = f"## FAILED {r['test']}: {r['kind']}" + (f" ({r['function']})" if r["function"] else "")
            lines += ["", title, "", "```", r["message"], "```", "", r["table"]]
    return "\n".join(lines) + "\n"
