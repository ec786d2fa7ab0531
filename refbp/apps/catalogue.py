"""The bug catalogue: every entry ``refbp bugs`` runs, and the one lookup by name.

An entry (refbp.apps.bug_record.Bug) is one wrong line of a backward pass beside the right one.
The entries live in six data modules, one per part of refbp they break:

    mlp_bugs.py          the MLP's eqs. (4)-(8): the loss's gradient, Dense twins
    layer_bugs.py        LayerNorm, BatchNorm1d, Dropout, Embedding, Residual twins
    curriculum_bugs.py   convolution, pooling, spatial norms, softmax, BPTT (twins in curriculum_twins.py)
    gpt_bugs.py          a GPT's attention, position embedding, tied head and loss
    distributed_bugs.py  data-parallel training's recipes, on simulated ranks
    second_order_bugs.py second order by hand: the R-operator's rules (order 2: H v is checked)

Whatever it breaks, an entry offers the same few things, and refbp.apps.bugs_cli runs them all
alike: draw small networks it applies to, check its gradients with the harness, and let
hypothesis shrink to the smallest network that exposes it.
"""

from __future__ import annotations

from .bug_record import Bug
from .curriculum_bugs import CURRICULUM_BUGS
from .distributed_bugs import DISTRIBUTED_BUGS
from .gpt_bugs import GPT_BUGS
from .layer_bugs import LAYER_BUGS
from .mlp_bugs import MLP_BUGS
from .second_order_bugs import SECOND_ORDER_BUGS

__all__ = ["CATALOGUE", "Entry", "get_bug"]

Entry = Bug
"""The old name of a catalogue entry's type."""

CATALOGUE: tuple[Bug, ...] = (
    *MLP_BUGS, *LAYER_BUGS, *CURRICULUM_BUGS, *GPT_BUGS, *DISTRIBUTED_BUGS, *SECOND_ORDER_BUGS,
)  # fmt: skip
"""Every entry: the MLP's, then the layers', the curriculum's (convolution to BPTT), the GPT's,
data-parallel training's, and second order's."""


def get_bug(name: str) -> Bug:
    """Look up an entry by name; a clear ValueError lists the names otherwise."""
    for bug in CATALOGUE:
        if bug.name == name:
            return bug
    raise ValueError(f"bug={name!r} is not in the catalogue; expected one of {[b.name for b in CATALOGUE]}")
