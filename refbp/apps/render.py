"""The one renderer of ``refbp explain``: a walk-through as a ``Page`` of entries, printed as
80-column text or as Markdown. Both walks (the seed's numbered equations, refbp.apps.explain,
and any network's layers, refbp.apps.walk) build a Page; neither prints anything itself."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from torch import Tensor

from ..verify.compare import Comparison
from .tensor_format import WIDTH, format_tensor

__all__ = ["Entry", "Page", "Quantity", "agrees", "mark", "render"]


@dataclass(frozen=True)
class Quantity:
    """One tensor the walk shows.

    Attributes:
        label: what it is, e.g. "a(2)" or "dJ/dW2"; "" when the entry's heading already says it.
        value: the number(s) refbp computed.
        check: torch's verdict on them, None for a given quantity (X, y, the parameters).
    """

    label: str
    value: Tensor
    check: Comparison | None = None


@dataclass(frozen=True)
class Entry:
    """One step of a walk: a heading, lines about it, and the quantities it computes.

    Attributes:
        section: the part of the walk it belongs to ("Given", "Forward pass", ...); a new
            section starts a new header.
        tag: "(5)" (an equation number) or "[4.1]" (a layer's path); "" for none.
        title: the step: an equation, e.g. "dJ/dz(2) = dJ/da(2) o f'(z(2))" (``code`` True, set
            as code in Markdown), or a layer's name, e.g. "LayerNorm(4)" (``code`` False).
        shapes: the shapes that make it type-check, e.g. "(2, 3) (3, 1) -> (2, 1)".
        quantities: what it computed, in order.
        formula: the layer's equation when the title is its name; "" otherwise.
        purpose: what the quantity is used for, one line without the period; "" for none.
        code: see ``title``.
    """

    section: str
    tag: str
    title: str
    shapes: str
    quantities: tuple[Quantity, ...]
    formula: str = ""
    purpose: str = ""
    code: bool = True


@dataclass(frozen=True)
class Page:
    """A whole walk: a title, an introduction, the entries, and what ends it.

    Attributes:
        title: e.g. "backpropagation, one equation at a time".
        intro: one paragraph: the network, the point, what torch checks.
        entries: the steps in order.
        noun: what the closing count counts ("steps", "quantities").
        links: Markdown-only lines after the introduction.
    """

    title: str
    intro: str
    entries: tuple[Entry, ...]
    noun: str = "quantities"
    links: tuple[str, ...] = ()

    @property
    def checks(self) -> list[Comparison]:
        """torch's verdicts, in the order the entries show them."""
        return [q.check for entry in self.entries for q in entry.quantities if q.check is not None]

    @property
    def passed(self) -> bool:
        """True when every quantity torch checked agrees with it (``agrees``)."""
        return all(agrees(check) for check in self.checks)

    def summary(self) -> tuple[str, str]:
        """The closing line as (count, verdict): "15 of 15 steps agree with torch", "; ..."."""
        checks = self.checks
        count = f"{sum(agrees(c) for c in checks)} of {len(checks)} {self.noun} agree with torch"
        if self.passed:
            return count, " (normwise, within refbp's float64 tolerance)."
        return count, "; those marked with a cross do not."


def agrees(check: Comparison) -> bool:
    """A walk shows a quantity as agreeing with torch only when every entry was compared and
    agreed (verdict "ok"); a "partial" verdict, some entries unverified, is not agreement."""
    return check.verdict == "ok"


def mark(check: Comparison | None, *, ascii_only: bool = False) -> str:
    """torch's verdict as a mark: ✓ / ✗, or [ok] / [FAIL]; "" for no check."""
    if check is None:
        return ""
    if ascii_only:
        return "[ok]" if agrees(check) else "[FAIL]"
    return "✓" if agrees(check) else "✗"


def render(page: Page, *, markdown: bool = False, ascii_only: bool = False) -> str:
    """``page`` as 80-column text (the default) or as Markdown; one trailing newline."""
    lines = _markdown(page) if markdown else _text(page, ascii_only)
    return "\n".join(lines) + "\n"


def _headed(entry: Entry) -> Quantity | None:
    """The quantity whose mark goes on the heading: the entry's only one, when it has no label."""
    if len(entry.quantities) == 1 and not entry.quantities[0].label:
        return entry.quantities[0]
    return None


def _text(page: Page, ascii_only: bool) -> list[str]:
    lines = [f"refbp explain: {page.title}", "", *textwrap.wrap(page.intro, WIDTH)]
    section = ""
    for entry in page.entries:
        if entry.section != section:
            section = entry.section
            lines += ["", f"== {section} " + "=" * max(0, WIDTH - len(section) - 4)]
        headed = _headed(entry)
        sign = mark(headed.check, ascii_only=ascii_only) if headed else ""
        head = f"{entry.tag or '   '} {entry.title}" + (f": {entry.formula}" if entry.formula else "")
        if sign and len(head) + len(sign) < WIDTH:
            head = head.ljust(WIDTH - len(sign) - 1) + " " + sign
        lines += ["", *textwrap.wrap(head, WIDTH, subsequent_indent="    ")]
        if sign and not lines[-1].endswith(sign):
            lines.append(" " * (WIDTH - len(sign)) + sign)
        lines += textwrap.wrap(f"shape {entry.shapes}", WIDTH, initial_indent="    ", subsequent_indent="      ")
        lines += textwrap.wrap(entry.purpose, WIDTH, initial_indent="    ", subsequent_indent="    ")
        indent = "    " if headed else "      "
        for q in entry.quantities:
            if not headed:
                lines.append(f"    {q.label} {mark(q.check, ascii_only=ascii_only)}".rstrip())
            lines += [indent + line for line in format_tensor(q.value)]
            if q.check is not None and not agrees(q.check):
                message = q.check.message()
                lines += textwrap.wrap(message, WIDTH, initial_indent=indent + "! ", subsequent_indent=indent + "  ")
    count, verdict = page.summary()
    return [*lines, "", "=" * WIDTH, *textwrap.wrap(count + verdict, WIDTH)]


def _markdown(page: Page) -> list[str]:
    lines = [
        f"# `refbp explain`: {page.title}",
        "",
        "<!-- Generated by `refbp explain --markdown` (scripts/make_docs.py); do not edit by hand. -->",
        "",
        page.intro,
        *page.links,
    ]
    section = ""
    for entry in page.entries:
        if entry.section != section:
            section = entry.section
            lines += ["", f"## {section}"]
        headed = _headed(entry)
        title = f"`{entry.title}`" if entry.code else entry.title
        heading = f"### {entry.tag + ' ' if entry.tag else ''}{title} {mark(headed.check) if headed else ''}"
        lines += ["", heading.rstrip()]
        first = f"`{entry.formula}`, shape `{entry.shapes}`" if entry.formula else f"Shape `{entry.shapes}`"
        lines += ["", ". ".join(_sentence(part) for part in (first, entry.purpose) if part) + "."]
        for q in entry.quantities:
            if not headed:
                lines += ["", f"{q.label} {mark(q.check)}".rstrip()]
            if q.check is not None and not agrees(q.check):
                lines += ["", f"**Mismatch:** {q.check.message()}"]
            lines += ["", "```text", *format_tensor(q.value), "```"]
    count, verdict = page.summary()
    return [*lines, "", f"**{count}**{verdict}"]


def _sentence(note: str) -> str:
    return note[:1].upper() + note[1:]
