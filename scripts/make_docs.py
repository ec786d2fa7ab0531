"""Write the generated docs: docs/explain*.md (the seed's MLP, layers, gpt, cnn, lstm), seed_corrected.md, equations.md.

    python scripts/make_docs.py            # (re)write them
    python scripts/make_docs.py --check    # exit 1 if any differs from what the code generates

tests/test_docs.py asserts that the committed files equal ``generate()``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from refbp.apps.equations import render_equation_map
from refbp.apps.explain import explain
from refbp.apps.explain_cnn import cnn_walkthrough
from refbp.apps.explain_lstm import lstm_walkthrough
from refbp.apps.io import write_atomic
from refbp.apps.seed import render_seed_document
from refbp.apps.walk import BUILT_IN, walk_network

ROOT = Path(__file__).resolve().parent.parent


def _walk(model: str) -> str:
    """``refbp explain --model MODEL --markdown``: the walk through a built-in network."""
    spec = BUILT_IN[model]
    case = spec.build()
    return walk_network(case.net, case.X, case.y, description=spec.describe()).render(markdown=True)


DOCS: dict[str, Callable[[], str]] = {
    "docs/explain.md": lambda: explain(markdown=True),
    "docs/explain_layers.md": lambda: _walk("layers"),
    "docs/explain_gpt.md": lambda: _walk("gpt"),
    "docs/explain_cnn.md": lambda: cnn_walkthrough().render(markdown=True),
    "docs/explain_lstm.md": lambda: lstm_walkthrough().render(markdown=True),
    "docs/seed_corrected.md": render_seed_document,
    "docs/equations.md": render_equation_map,
}
"""Each generated file, relative to the repository root, and the function that writes it."""


def generate() -> dict[str, str]:
    """{relative path: text} for every generated doc."""
    return {path: render() for path, render in DOCS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generate().items():
        target = ROOT / path
        if args.check:
            if not target.is_file() or target.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            write_atomic(target, text)
            print(f"wrote {path}")
    for path in stale:
        print(f"{path} is out of date: run python scripts/make_docs.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
