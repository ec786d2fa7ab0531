"""Any case spec from its JSON: the MLP's (refbp.verify.cases.CaseSpec, with "dims") or a layer
stack's (refbp.verify.stacks.StackSpec, with "layers"), so that ``refbp check --case`` rebuilds
whatever ``refbp report`` printed."""

from __future__ import annotations

from typing import Any

from .cases import CaseSpec
from .stacks import StackSpec

__all__ = ["SPEC_KINDS", "spec_from_dict"]

SPEC_KINDS: dict[str, Any] = {"layers": StackSpec, "dims": CaseSpec}
"""A key that only one kind of spec has -> that kind."""


def spec_from_dict(data: dict[str, Any]) -> Any:
    """The spec ``data`` describes (checked strictly by its kind's from_dict); a ValueError if
    it has none of the keys that tell the kinds apart."""
    for key, kind in SPEC_KINDS.items():
        if key in data:
            return kind.from_dict(data)
    keys = " or ".join(repr(k) for k in SPEC_KINDS)
    raise ValueError(f"the case spec needs {keys} (an MLP's dims or a stack's layers); it has {sorted(data)}")
