"""Key: the one name of a tensor of a network, as people write it: "W1", "z2", "a3.2", "X".

A key is a kind and a layer path. The kind says what the tensor is (W, b, z, a, gamma, beta,
E, q, ...: names from the math, letters and underscores only); the path says where it is:
(l,) for layer l, counted from 1 as in the equations, (l, j) for sub-layer j of a composite
layer l (a Residual, a transformer block), and () for the input X. A gradient dJ/d(that) is
stored and reported under the same key.

    str(Key("W", (1,)))  == "W1"          Key.parse("W1")   == Key("W", (1,))
    str(Key("a", (3, 2))) == "a3.2"       Key.parse("a3.2") == Key("a", (3, 2))
    str(Key("X"))        == "X"           Key.parse("X")    == Key("X")

Keys sort by layer path first (layer 1 before layer 2, X last), then by kind in the order a
layer's equations produce them (parameters, then intermediates, then the output a).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = ["KIND_ORDER", "Key", "sort_names"]

_PATTERN = re.compile(r"([A-Za-z_]+?)((?:\d+)(?:\.\d+)*)?")
_KIND = re.compile(r"[A-Za-z_]+")

KIND_ORDER = ("W", "b", "gamma", "beta", "E", "P", "z", "xhat", "a")
"""The order of the common kinds within one layer, for names sorted without their network
(``sort_names``): parameters, then intermediates, then the output a; other kinds come after,
alphabetically. A network orders its own names as its layers list them (Network.in_order)."""


@dataclass(frozen=True)
class Key:
    """The name of one tensor of a network: a parameter, an intermediate, or the input X.

    Attributes:
        kind: what it is, e.g. "W", "b", "z", "a", "gamma"; "X" for the input.
        layer: (l,) for layer l (from 1), (l, j) for sub-layer j of layer l, () for X.
    """

    kind: str
    layer: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not (isinstance(self.kind, str) and _KIND.fullmatch(self.kind)):
            raise ValueError(f"key kind {self.kind!r} must be letters and underscores only")
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 1 for i in self.layer):
            raise ValueError(f"key layer path {self.layer!r} must hold layer numbers >= 1")

    def __str__(self) -> str:
        return self.name

    @functools.cached_property
    def name(self) -> str:
        """The key as people write it: "W1", "a3.2", "X" (computed once per key)."""
        return self.kind + ".".join(str(i) for i in self.layer)

    @classmethod
    def at(cls, kind: str, layer: tuple[int, ...]) -> Key:
        """``Key(kind, layer)``, the same object for the same arguments: the loops name every
        tensor of every pass with a key, and a network has only a few dozen of them, so each is
        built and checked once (and its ``name`` computed once)."""
        return _key_at(kind, layer)

    @classmethod
    def parse(cls, text: str) -> Key:
        """The key a name stands for: "W1" -> Key("W", (1,)); a ValueError for anything else."""
        key = _parse(text) if isinstance(text, str) else None
        if key is None:
            raise ValueError(f"{text!r} is not a tensor name like 'W1', 'a3.2' or 'X'")
        return key

    @classmethod
    def is_valid(cls, text: object) -> bool:
        """True when ``text`` is a key's name."""
        return isinstance(text, str) and _parse(text) is not None

    def child(self, j: int) -> Key:
        """The same kind one level down: Key("a", (3,)).child(2) == Key("a", (3, 2))."""
        return Key(self.kind, (*self.layer, j))

    def sort_key(self) -> tuple[int, tuple[int, ...], int, str]:
        """Layer order (X last), then the kind's place in KIND_ORDER."""
        rank = KIND_ORDER.index(self.kind) if self.kind in KIND_ORDER else len(KIND_ORDER)
        return (0 if self.layer else 1, self.layer, rank, self.kind)


@functools.lru_cache(maxsize=65536)
def _key_at(kind: str, layer: tuple[int, ...]) -> Key:
    return Key(kind, layer)


# Parsing and ordering names run on every backward pass (a Gradients sorts its names), so both
# are remembered: a key is immutable, and a network uses the same few dozen names again and again.
@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> Key | None:
    """The key ``text`` names, or None when it names none."""
    match = _PATTERN.fullmatch(text)
    if match is None:
        return None
    kind, path = match.group(1), match.group(2)
    return Key(kind, tuple(int(i) for i in path.split("."))) if path else Key(kind)


@functools.lru_cache(maxsize=4096)
def _name_order(name: str) -> tuple[int, tuple[object, ...]]:
    key = _parse(name)
    if key is not None:
        return (0, key.sort_key())
    parts = re.split(r"(\d+)", name)
    return (1, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts))


def sort_names(names: list[str]) -> list[str]:
    """Names in key order ("W1", "b1", "z1", "a1", "W2", ..., "X"); names that are not keys
    (a user's "fc1.weight") come after, in natural order ("w2" before "w10")."""
    return sorted(names, key=_name_order)
