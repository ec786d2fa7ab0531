"""The bug catalogue, every part of it: what an entry is, and the list ``refbp bugs`` runs.

An entry is one wrong line of a backward pass beside the right one. The MLP's classic bugs
(refbp.apps.bugs) replace one line of eqs. (4)-(8); the layers' (refbp.apps.layer_bugs) and the
GPT's (refbp.apps.gpt_bugs) are twins of the right layers with the wrong line; data-parallel
training's (refbp.apps.distributed_bugs) are wrong all-reduce recipes, run on simulated ranks.
Whatever its kind, an entry offers the same few things, and refbp.apps.bugs_cli runs them all
alike: draw small networks it applies to, check its gradients with the harness, and let
hypothesis shrink to the smallest network that exposes it.
"""

from __future__ import annotations

from typing import Any, Protocol

from hypothesis import strategies as st
from torch import Tensor

from ..verify.cases import Case
from .bugs import BUGS
from .distributed_bugs import DISTRIBUTED_BUGS
from .gpt_bugs import GPT_BUGS
from .layer_bugs import LAYER_BUGS

__all__ = ["CATALOGUE", "Entry", "get_entry"]


class Entry(Protocol):
    """What every catalogue entry offers."""

    @property
    def name(self) -> str:
        """A short identifier (refbp bugs --only NAME)."""
        ...

    @property
    def title(self) -> str:
        """What the bug is, in a few words."""
        ...

    @property
    def equation(self) -> int | str:
        """The number of the equation the wrong line computes, or the layer it breaks."""
        ...

    @property
    def wrong(self) -> str:
        """The wrong line, as people write it."""
        ...

    @property
    def right(self) -> str:
        """The right line."""
        ...

    @property
    def why(self) -> str:
        """Why the first is wrong (or, for an equivalent entry, why it is not)."""
        ...

    @property
    def equivalent(self) -> bool:
        """The "wrong" line computes the same numbers: nothing should flag it."""
        ...

    @property
    def where(self) -> str:
        """The networks it applies to, in words."""
        ...

    def specs(self) -> st.SearchStrategy[Any]:
        """Small float64 networks it applies to (specs with build(), to_json(), describe())."""
        ...

    def gradients(self, case: Case) -> tuple[dict[str, Tensor], dict[tuple[int, ...], Tensor]]:
        """The buggy gradients at the case's point, and the random draws (dropout masks) used."""
        ...


CATALOGUE: tuple[Entry, ...] = (*BUGS, *LAYER_BUGS, *GPT_BUGS, *DISTRIBUTED_BUGS)
"""Every entry: the MLP's, then the layers', the GPT's, and data-parallel training's."""


def get_entry(name: str) -> Entry:
    """Look up an entry by name; a clear ValueError lists the names otherwise."""
    for entry in CATALOGUE:
        if entry.name == name:
            return entry
    raise ValueError(f"bug={name!r} is not in the catalogue; expected one of {[e.name for e in CATALOGUE]}")
