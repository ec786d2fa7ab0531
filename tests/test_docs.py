"""The generated docs equal what the code generates now, and the equation map names
functions and tests that exist."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

from refbp.apps.explain import EQUATIONS, code_line

ROOT = Path(__file__).resolve().parent.parent


def _make_docs():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_docs", ROOT / "scripts" / "make_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", ["docs/explain.md", "docs/seed_corrected.md", "docs/equations.md"])
def test_committed_doc_equals_what_the_code_generates(path: str) -> None:
    generated = _make_docs().DOCS[path]()
    committed = (ROOT / path).read_text(encoding="utf-8")
    assert committed == generated, f"{path} is stale: run python scripts/make_docs.py"


def test_every_test_named_in_the_equation_map_exists() -> None:
    for eq in EQUATIONS:
        for ref in eq.tests:
            file, name = ref.split("::")
            tree = ast.parse((ROOT / file).read_text(encoding="utf-8"))
            names = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
            assert name in names, f"equation ({eq.number}) cites {ref}, which does not exist"


def test_every_equation_is_tagged_in_the_code_that_computes_it() -> None:
    for eq in EQUATIONS:
        assert f"({eq.number})" in code_line(eq)


def test_seed_document_verdicts_are_the_evaluated_ones() -> None:
    text = (ROOT / "docs/seed_corrected.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d) \| `[^`]+` \| ([a-z -]+) \| `[^`]+` \| ([a-z -]+) \|$", text, flags=re.M)
    verdicts = {int(k): (written, corrected) for k, written, corrected in rows}
    assert verdicts[2] == ("fails", "passes")  # the sign of dJ/dy_hat
    assert verdicts[1] == ("does not type-check", "passes")  # W X with one row per observation
    assert all(corrected == "passes" for _, corrected in verdicts.values())
