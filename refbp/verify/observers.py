"""Who hears of every check: a registry of callbacks that a check reports its result to, filled
from a higher floor (refbp.pytest_plugin records the checks of a test session), so that verify
never imports what listens to it.

    remove = add_observer(lambda kind, result: print(kind, result.passed))
    ...
    remove()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .result import CheckResult

__all__ = ["Observer", "add_observer", "notify"]

Observer = Callable[[str, "CheckResult"], None]
"""(kind, result) -> None: kind is the check's function name ("check_autograd_function", ...)."""

_OBSERVERS: list[Observer] = []


def add_observer(observer: Observer) -> Callable[[], None]:
    """Call ``observer(kind, result)`` after every check that reports here; returns the remover."""
    if not callable(observer):
        raise TypeError(f"observer must be callable as observer(kind, result), got {type(observer).__name__}")
    _OBSERVERS.append(observer)

    def remove() -> None:
        if observer in _OBSERVERS:
            _OBSERVERS.remove(observer)

    return remove


def notify(kind: str, result: CheckResult) -> CheckResult:
    """Tell every observer of ``result``; returns it, so a check can end with ``return notify(...)``."""
    for observer in list(_OBSERVERS):
        observer(kind, result)
    return result
