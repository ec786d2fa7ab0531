"""The case-spec protocol and the registry that turns a spec's JSON back into a spec.

A spec is a small, frozen, JSON-friendly description of a network and the point to check it
at, built reproducibly from one seed: an MLP's (refbp.verify.cases.CaseSpec, with "dims"), a
layer stack's (refbp.verify.stacks.StackSpec, with "layers"), a GPT's (refbp.models.gpt_cases.
GPTSpec, with "model": "gpt"). Every kind registers itself here with the key that only its
JSON has (``register_spec_kind``): the two above in this floor, the GPT's when refbp.models is
imported (models builds on verify; verify never imports models). ``spec_from_dict`` reads
whichever kind a dict is, so ``refbp check --case`` rebuilds whatever ``refbp report`` printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from .cases import Case, CaseSpec
from .stacks import StackSpec

__all__ = ["SPEC_KINDS", "Spec", "SpecKind", "register_spec_kind", "spec_from_dict"]


@runtime_checkable
class Spec(Protocol):
    """What every kind of case spec provides.

    Attributes:
        kind: the kind's name, "mlp", "stack" or "gpt" (the registry's key).
        seed: draws the parameters and the point.
        loss: the loss's name.
    """

    kind: ClassVar[str]

    @property
    def seed(self) -> int: ...

    @property
    def loss(self) -> str: ...

    def build(self) -> Case[Any]:
        """The network and (X, y), drawn from ``seed``."""
        ...

    def describe(self) -> str:
        """The network and the point in one short line."""
        ...

    def components(self) -> list[str]:
        """What the case exercises, for the report's coverage table (layers, activations, modes)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """The JSON object that ``spec_from_dict`` turns back into this spec."""
        ...

    def to_json(self) -> str:
        """``to_dict()`` as one line of JSON, keys sorted (what REPORT.md prints)."""
        ...

    def command(self) -> str:
        """The shell command that checks exactly this case."""
        ...


@dataclass(frozen=True)
class SpecKind:
    """One registered kind: its name, the key only its JSON has, and the class that reads it."""

    name: str
    marker: str
    spec_class: Any  # a class with from_dict(data) -> Spec


SPEC_KINDS: dict[str, SpecKind] = {}
"""Every registered kind by name ("mlp", "stack", "gpt"), in registration order."""


def register_spec_kind(spec_class: Any, *, marker: str) -> None:
    """Make ``spec_from_dict`` read dicts that have the key ``marker`` with ``spec_class.from_dict``.

    ``spec_class.kind`` names the kind; registering the same class again is harmless, another
    class under a taken name or marker is a ValueError."""
    name = spec_class.kind
    for kind in SPEC_KINDS.values():
        clash = kind.name == name or kind.marker == marker
        if clash and kind.spec_class is not spec_class:
            raise ValueError(
                f"spec kind {name!r} (marker {marker!r}) clashes with {kind.spec_class.__name__}'s "
                f"{kind.name!r} (marker {kind.marker!r})"
            )
    SPEC_KINDS[name] = SpecKind(name, marker, spec_class)


register_spec_kind(CaseSpec, marker="dims")
register_spec_kind(StackSpec, marker="layers")


def spec_from_dict(data: dict[str, Any]) -> Spec:
    """The spec ``data`` describes, checked strictly by its kind's ``from_dict`` (unknown keys,
    wrong types and values out of range are refused, naming the key); a ValueError if ``data``
    has none of the keys that tell the kinds apart."""
    if not isinstance(data, dict):
        raise TypeError(f"a case spec must be a dict (a JSON object), got {type(data).__name__}")
    for kind in SPEC_KINDS.values():
        if kind.marker in data:
            spec: Spec = kind.spec_class.from_dict(data)
            return spec
    known = ", ".join(f"{kind.marker!r} ({kind.name})" for kind in SPEC_KINDS.values())
    hint = "" if "gpt" in SPEC_KINDS else "; a GPT's spec ('model') is read once refbp.models is imported"
    raise ValueError(f"the case spec needs one of the keys {known}; it has {sorted(data)}{hint}")
