"""Any case spec from its JSON: the MLP's (refbp.verify.cases.CaseSpec, with "dims"), a layer
stack's (refbp.verify.stacks.StackSpec, with "layers") or a GPT's (refbp.models.gpt_cases.GPTSpec,
with "model": "gpt"), so that ``refbp check --case`` rebuilds whatever ``refbp report`` printed."""

from __future__ import annotations

from typing import Any

from .cases import CaseSpec
from .stacks import StackSpec

__all__ = ["SPEC_KINDS", "spec_from_dict"]


def _gpt_spec() -> Any:
    from ..models.gpt_cases import GPTSpec  # refbp.models builds on refbp.verify: imported on use

    return GPTSpec


SPEC_KINDS: dict[str, Any] = {"model": _gpt_spec, "layers": lambda: StackSpec, "dims": lambda: CaseSpec}
"""A key that only one kind of spec has -> (a function giving) that kind."""


def spec_from_dict(data: dict[str, Any]) -> Any:
    """The spec ``data`` describes (checked strictly by its kind's from_dict); a ValueError if
    it has none of the keys that tell the kinds apart."""
    for key, kind in SPEC_KINDS.items():
        if key in data:
            return kind().from_dict(data)
    keys = " or ".join(repr(k) for k in SPEC_KINDS)
    raise ValueError(
        f"the case spec needs {keys} (a GPT's model, a stack's layers or an MLP's dims); it has {sorted(data)}"
    )
