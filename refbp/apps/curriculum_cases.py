"""The small networks the curriculum's catalogue entries (refbp.apps.curriculum_bugs) are drawn
on: CNNs on images and recurrent networks on sequences, as StackSpecs (refbp.verify.stacks),
each strategy drawing the geometry its bug needs to show (padding for an unpadded input,
stride for an ignored stride, overlapping windows, integer inputs for tied maxima, ...).

Every strategy is float64, training mode unless said, shrinkable by hypothesis towards fewer
channels, smaller images, shorter sequences and a smaller batch; each network ends in Flatten
(images) and a Linear to an mse or cross-entropy loss.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from ..verify.stacks import StackSpec

__all__ = [
    "conv_stacks",
    "group_norm_stacks",
    "pool_stacks",
    "recurrent_stacks",
    "softmax_stacks",
    "spatial_norm_stacks",
]

LOSSES = ("mse", "cross_entropy")
"""The losses drawn: one on values, one on classes (every step's, for a sequence)."""


def _spec(draw: st.DrawFn, given: Any, layers: list[Any], *, batch: tuple[int, int] = (1, 3), rows: bool = True,
          training: bool = True) -> StackSpec:  # fmt: skip
    """A StackSpec of ``layers`` on the input ``given`` with the head, a loss, a batch and a seed."""
    loss = draw(st.sampled_from(LOSSES))
    head: list[Any] = [["flatten"]] if rows else []
    head.append(["linear", draw(st.integers(2, 3))])
    return StackSpec.from_dict({
        "input": given, "layers": [*layers, *head], "loss": loss, "seed": draw(st.integers(0, 2**31 - 1)),
        "batch": draw(st.integers(*batch)), "training": training,
    })  # fmt: skip


@st.composite
def _dimension(draw: st.DrawFn, n: int, *, padded: bool, strided: bool, dilated: bool) -> tuple[int, int, int, int]:
    """(kernel, stride, padding, dilation) of a convolution along a dimension of n entries."""
    p = draw(st.integers(1 if padded else 0, 2))
    d = draw(st.integers(1, 2)) if dilated else 1
    largest = max(1, min(3, (n + 2 * p - 1) // d + 1))  # the dilated kernel fits the padded input
    k = draw(st.integers(1, largest))
    return k, draw(st.integers(2, 3) if strided else st.integers(1, 2)), p, d


@st.composite
def conv_stacks(
    draw: st.DrawFn, *, padded: bool = False, strided: bool = False, grouped: bool = False, same: bool = False
) -> StackSpec:
    """A Conv2d on (N, C, H, W) images (then tanh in one of two): ``padded`` pads every side
    by 1 or 2, ``strided`` strides by 2 or 3, ``grouped`` has 2 groups of 1-2 input and 2-3
    output channels; ``same`` may draw padding "same"; otherwise padding 0-2, stride 1-2,
    dilation 1-2, groups dividing the channels."""
    if grouped:
        G, C = 2, 2 * draw(st.integers(1, 2))
        C_out = G * draw(st.integers(2, 3))
    else:
        C = draw(st.integers(1, 3))
        G = draw(st.sampled_from([g for g in range(1, C + 1) if C % g == 0]))
        C_out = G * draw(st.integers(1, 2))
    H, W = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dims = [draw(_dimension(n, padded=padded, strided=strided, dilated=not grouped)) for n in (H, W)]
    kernel, stride, padding, dilation = ([dim[i] for dim in dims] for i in range(4))
    options: dict[str, Any] = {"kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation,
                               "groups": G, "bias": draw(st.booleans())}  # fmt: skip
    if same and draw(st.booleans()):
        options |= {"padding": "same", "stride": 1}
    layers: list[Any] = [["conv2d", C_out, options]]
    if draw(st.booleans()):
        layers.append(["tanh"])
    return _spec(draw, {"shape": [C, H, W]}, layers)


@st.composite
def pool_stacks(draw: st.DrawFn, kind: str, *, overlapping: bool = False, padded: bool = False,
                ties: bool = False) -> StackSpec:  # fmt: skip
    """A MaxPool2d or AvgPool2d (``kind``) first, on (N, C, H, W) images: ``overlapping``
    windows (stride below the kernel), ``padded`` windows (padding 1, kernel 2-3), ``ties``:
    integer entries from -2..2, so that windows hold their maximum twice."""
    C, H, W = draw(st.integers(1, 2)), draw(st.integers(2, 5)), draw(st.integers(2, 5))
    kernel, stride, padding = [], [], []
    for n in (H, W):
        k = draw(st.integers(2 if padded or overlapping or ties else 1, min(3, n)))  # ties: two entries or more
        p = 1 if padded else draw(st.integers(0, k // 2))
        kernel.append(k)
        padding.append(p)
        stride.append(draw(st.integers(1, k - 1) if overlapping else st.integers(1, k + 1)))
    options: dict[str, Any] = {"kernel": kernel, "stride": stride, "padding": padding}
    if kind == "avgpool":
        options["count_include_pad"] = draw(st.booleans())
    given: dict[str, Any] = {"shape": [C, H, W], **({"integers": True} if ties else {})}
    return _spec(draw, given, [[kind, options]])


@st.composite
def spatial_norm_stacks(draw: st.DrawFn) -> StackSpec:
    """A BatchNorm2d in training mode (affine or not) on (N, C, H, W) images, after a 1x1
    Conv2d in one of two; N H W >= 2 (a variance of one value is 0)."""
    C, H, W = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    layers: list[Any] = []
    if draw(st.booleans()):
        layers.append(["conv2d", C, {"kernel": 1}])
    layers.append(["batchnorm2d", draw(st.sampled_from([{}, {"affine": False}]))])
    return _spec(draw, {"shape": [C, H, W]}, layers, batch=(2 if H * W < 2 else 1, 3))


@st.composite
def group_norm_stacks(draw: st.DrawFn) -> StackSpec:
    """A GroupNorm of G groups of at least two channels each, 1 < G < C (C = 4 or 6), affine or
    not, on (N, C, H, W) images."""
    C = draw(st.sampled_from([4, 6]))
    G = draw(st.sampled_from([g for g in range(2, C) if C % g == 0]))
    H, W = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return _spec(draw, {"shape": [C, H, W]}, [["groupnorm", G, draw(st.sampled_from([{}, {"affine": False}]))]])


@st.composite
def softmax_stacks(draw: st.DrawFn) -> StackSpec:
    """Rows (N, d) through Linear to 2-4 features, Softmax over them, and the head."""
    d, k = draw(st.integers(1, 4)), draw(st.integers(2, 4))
    return _spec(draw, d, [["linear", k], ["softmax", 1]])


@st.composite
def recurrent_stacks(draw: st.DrawFn, *, kinds: tuple[str, ...] = ("rnn", "lstm", "gru")) -> StackSpec:
    """An RNN (tanh), LSTM or GRU of one or two stacked layers on token indices (through an
    Embedding) or on (N, T, d) numbers, T 1-4, batch_first either way, bias or not, an initial
    state or zeros; a Linear on every step."""
    kind = draw(st.sampled_from(kinds))
    T, d, H = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    options = {"layers": draw(st.integers(1, 2)), "bias": draw(st.booleans()), "batch_first": draw(st.booleans()),
               "initial_state": draw(st.booleans())}  # fmt: skip
    tokens = draw(st.booleans())
    given: Any = {"vocab": draw(st.integers(2, 5)), "length": T} if tokens else {"shape": [T, d]}
    layers: list[Any] = [["embedding", d]] if tokens else []
    return _spec(draw, given, [*layers, [kind, H, options]], rows=False)
