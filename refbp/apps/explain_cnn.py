"""``refbp explain --model cnn``: a small convolutional network walked one chain-rule step at a time.

    refbp explain --model cnn                 # Conv2d -> relu -> MaxPool2d -> Flatten -> Linear, seed 0
    refbp explain --model cnn --seed 3 --batch 1

The network reads N single-channel 4 x 4 images and classifies them into 3 classes
(cross-entropy): Conv2d(1 -> 2, 3 x 3, padding 1), relu, MaxPool2d(2), Flatten, Linear(8 -> 3).
The convolution is shown as im2col, the shapes its backward pass works with:

    X_col = unfold(X)                  (N, C k_h k_w, L)    every window as a column, L = H_out W_out
    z_n   = W_mat X_col_n + b          W_mat = W as (C_out, C k_h k_w)
    dJ/dW = sum_n dJ/dz_n X_col_n^T    (C_out, C k_h k_w), then W's shape
    dJ/dX = fold(W_mat^T dJ/dz_n)      col2im; refbp computes it as the transposed convolution

and the max-pool with the positions its forward pass kept (the cache's argmax), where its
backward pass sends each window's gradient. Every number is the layer's own (the walk of
refbp.apps.walk); each is checked against torch (F.conv2d, F.max_pool2d, ...; torch.autograd).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..nn.activations import ACTIVATIONS
from ..nn.conv import Conv2d
from ..nn.flatten import Flatten
from ..nn.layers import Elementwise, Linear, MaxPool2d
from ..nn.network import Network
from ..nn.pool import PoolCache
from ..nn.validation import check_int, check_seed
from .explain_guided import GuidedWalk, drawn, forward, given, gradient
from .render import Entry, Page, Quantity
from .tensor_format import shape_text
from .walk import walk_network

__all__ = ["CLASSES", "IMAGE", "cnn_network", "cnn_point", "cnn_walkthrough", "walk_cnn"]

IMAGE = (1, 4, 4)
"""(C, H, W) of an input image: small enough that every image, feature map and kernel of the
walk is printed in full."""

CLASSES = 3
"""Classes the network tells apart (the logits' width)."""


def cnn_network(seed: int = 0) -> Network:
    """Conv2d(1 -> 2, 3 x 3, padding 1) -> relu -> MaxPool2d(2) -> Flatten -> Linear(8 -> 3),
    cross-entropy; float64, drawn from ``seed`` as torch.nn initialises (U(+-1/sqrt(fan_in)))."""
    generator = torch.Generator().manual_seed(seed)
    C, H, W = IMAGE
    C_out, k = 2, 3
    fan_in = C * k * k
    conv = Conv2d(
        drawn(generator, (C_out, C, k, k), 1 / math.sqrt(fan_in)), drawn(generator, (C_out,), 1 / math.sqrt(fan_in)),
        padding=1,
    )  # fmt: skip
    features = C_out * (H // 2) * (W // 2)  # after the 2 x 2 pool
    head = Linear(
        drawn(generator, (CLASSES, features), 1 / math.sqrt(features)),
        drawn(generator, (CLASSES,), 1 / math.sqrt(features)),
    )
    return Network([conv, Elementwise(ACTIVATIONS["relu"]), MaxPool2d(2), Flatten(), head], "cross_entropy")


def cnn_point(batch: int = 2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """N images X ~ U(-1, 1) (N, 1, 4, 4) and their classes y (N,), from seed + 1."""
    generator = torch.Generator().manual_seed((seed + 1) % 2**32)
    X = drawn(generator, (batch, *IMAGE), 1.0)  # (N, C, H, W)
    return X, torch.randint(0, CLASSES, (batch,), generator=generator)  # (N,)


def cnn_walkthrough(*, seed: int = 0, batch: int = 2) -> GuidedWalk:
    """The walk through ``cnn_network(seed)`` at ``cnn_point(batch, seed)``."""
    check_seed(seed, "seed")
    check_int(batch, "batch", minimum=1, maximum=1 << 16)
    X, y = cnn_point(batch, seed)
    return walk_cnn(cnn_network(seed), X, y, seed=seed)


def walk_cnn(net: Network, X: Tensor, y: Tensor, *, seed: int = 0) -> GuidedWalk:
    """``net`` (the layers of ``cnn_network``, possibly yours in their place) walked at (X, y)."""
    conv, _, pool, _, head = net.layers
    if not isinstance(conv, Conv2d) or not isinstance(pool, MaxPool2d) or not isinstance(head, Linear):
        raise TypeError(
            f"walk_cnn needs cnn_network's layers (Conv2d, relu, MaxPool2d, Flatten, Linear), got {net.describe()}"
        )
    walk = walk_network(net, X, y, description=net.describe())
    N, C, H, W = X.shape
    C_out, (k_h, k_w), (H_out, W_out) = conv.C_out, conv.kernel_size, conv.out_size((H, W))
    L, rows = H_out * W_out, C * k_h * k_w
    pads = conv.pads()
    a = {l: walk.value("forward", f"a({l})")[0] for l in range(1, 6)}
    pooled = pool.out_size(H_out, W_out)
    assert walk.cache is not None
    pool_cache = walk.cache.saved[3]
    assert isinstance(pool_cache, PoolCache)
    # which entry of each window won, in scan order
    argmax = pool.window_argmax(pool_cache, (N, C_out, H_out, W_out)).view(N, C_out, *pooled)
    d = head.W.shape[1]

    def entry(section: str, tag: str, title: str, shapes: str, *quantities: Quantity, purpose: str = "") -> Entry:
        return Entry(section, tag, title, shapes, quantities, purpose=purpose)

    G, F_, B = "Given", "Forward pass", "Backward pass, layer 5 down to 1"
    entries = [
        entry(G, "", "X", f"(N, C, H, W) = {shape_text(X)}", given("", X), purpose=f"{N} images, {C} channel"),
        entry(G, "", "y", shape_text(y), given("", y), purpose="each image's class"),
        entry(G, "[1]", "W(1), b(1)", f"(C_out, C, k_h, k_w) = {shape_text(conv.W)}, ({C_out},)",
              given("W(1)", conv.W), given("b(1)", conv.params["b"]),
              purpose="the convolution's kernels, one per output channel"),
        entry(G, "[5]", "W(5), b(5)", f"{shape_text(head.W)}, {shape_text(head.params['b'])}",
              given("W(5)", head.W), given("b(5)", head.params["b"]), purpose="the classifier's weights"),
        # ---- forward ----
        entry(F_, "[1]", "X_col = unfold(X)   (im2col)",
              f"(N, C, H, W) = {shape_text(X)} -> (N, C k_h k_w, L) = ({N}, {rows}, {L}), "
              f"L = H_out W_out = {H_out} x {W_out}",
              purpose=f"every {k_h} x {k_w} window of X (zero-padded by {pads[0][0]}) as one column: row (c, u, v) "
              f"of column (i, j) is x_pad[n, c, i + u, j + v]. W(1) is read as W_mat ({C_out}, {rows}), one "
              "kernel per row, so the convolution is one matrix product per image"),
        entry(F_, "[1]", "z(1) = W_mat X_col_n + b(1)  reshaped to (C_out, H_out, W_out)",
              f"({C_out}, {rows}) ({N}, {rows}, {L}) + ({C_out}, 1) -> ({N}, {C_out}, {L}) -> {shape_text(a[1])}",
              forward(walk, "a(1)", "z(1) = a(1)"),
              purpose="refbp's forward pass is torch's conv2d (the same cross-correlation), checked against F.conv2d"),
        entry(F_, "[2]", "a(2) = relu(z(1)) = max(z(1), 0)", f"{shape_text(a[1])}, elementwise", forward(walk, "a(2)")),
        entry(F_, "[3]", f"a(3) = max over each {pool.kernel_size[0]} x {pool.kernel_size[1]} window of a(2)",
              f"{shape_text(a[2])} -> {shape_text(a[3])}", forward(walk, "a(3)"),
              Quantity("argmax(3), which entry of each window won (0 1 / 2 3: row by row)", argmax),
              purpose="the cache keeps where each maximum sits: the backward pass sends the window's gradient there"),
        entry(F_, "[4]", "a(4) = a(3) flattened", f"{shape_text(a[3])} -> {shape_text(a[4])}", forward(walk, "a(4)")),
        entry(F_, "[5]", "z(5) = a(4) W(5)^T + b(5)",
              f"({N}, {d}) {shape_text(head.W)}^T + ({CLASSES},) -> {shape_text(a[5])}",
              forward(walk, "a(5)", "z(5) = a(5), the logits")),
        entry(F_, "[J]", "J = mean_n (logsumexp(z_n) - z_n[y_n])", f"{shape_text(a[5])}, {shape_text(y)} -> ()",
              forward(walk, "J"), purpose="cross-entropy, checked against F.cross_entropy"),
        # ---- backward ----
        entry(B, "[J]", "dJ/dz(5) = (softmax(z(5)) - onehot(y)) / N", f"{shape_text(a[5])}, like z(5)",
              gradient(walk, "a5"), purpose="where the backward pass starts"),
        entry(B, "[5]", "dJ/dW(5) = dJ/dz(5)^T a(4) ;  dJ/db(5) = column sums ;  dJ/da(4) = dJ/dz(5) W(5)",
              f"{shape_text(a[5])}^T ({N}, {d}) -> {shape_text(head.W)} ;  -> ({CLASSES},) ;  -> ({N}, {d})",
              gradient(walk, "W5"), gradient(walk, "b5"), gradient(walk, "a4")),
        entry(B, "[4]", "dJ/da(3) = dJ/da(4) reshaped", f"({N}, {d}) -> {shape_text(a[3])}", gradient(walk, "a3"),
              purpose="flattening moves no number: its gradient only takes the shape back"),
        entry(B, "[3]", "dJ/da(2)[argmax of each window] += dJ/da(3) ;  0 elsewhere",
              f"{shape_text(a[3])} -> {shape_text(a[2])}", gradient(walk, "a2"),
              purpose="each window's gradient goes to the one entry that won it (argmax(3) above); the others "
              "get 0. Windows that overlap (stride < kernel) would add up their gradients, hence +="),
        entry(B, "[2]", "dJ/dz(1) = dJ/da(2) o [z(1) > 0]", f"{shape_text(a[2])}, elementwise",
              gradient(walk, "a1", "dJ/dz(1) = dJ/da1")),
        entry(B, "[1]", "dJ/db(1) = sum over n, i, j of dJ/dz(1)", f"{shape_text(a[1])} -> ({C_out},)",
              gradient(walk, "b1")),
        entry(B, "[1]", "dJ/dW(1) = sum_n dJ/dZ_n X_col_n^T  reshaped to W(1)'s shape",
              f"({C_out}, {L}) ({L}, {rows}) summed over n -> ({C_out}, {rows}) -> {shape_text(conv.W)}",
              gradient(walk, "W1"),
              purpose="dJ/dZ_n is dJ/dz(1) of image n as (C_out, L). refbp never builds X_col whole: its rows "
              "for kernel offset (u, v) are the strided slice x_pad[:, :, u + i, v + j], so dJ/dW[:, :, u, v] "
              "is one matrix product per offset"),
        entry(B, "[1]", "dJ/dX = fold(W_mat^T dJ/dZ_n)   (col2im)",
              f"({rows}, {C_out}) ({N}, {C_out}, {L}) -> ({N}, {rows}, {L}) -> fold -> {shape_text(X)}",
              gradient(walk, "X"),
              purpose="each column of W_mat^T dJ/dZ_n added back where its window was; refbp computes the same "
              f"sums as the transposed convolution conv_transpose2d(dJ/dz(1), W(1), padding {pads[0][0]})"),
    ]  # fmt: skip
    intro = (
        f"{net.describe()}, seed {seed}, N = {N} images of {C} x {H} x {W}, float64. Every number is the "
        "layers' own; forward values are checked against torch.nn.functional, gradients against torch.autograd:"
        " a check mark says torch agrees, a cross that it differs (and where, by how much)."
    )
    links = ("The layers: refbp/nn/conv.py, pool.py; any network's walk: [explain_layers.md](explain_layers.md).",)
    page = Page("a convolutional network, im2col and max-pool by hand", intro, tuple(entries), links=links)
    return GuidedWalk(walk, page, seed)
