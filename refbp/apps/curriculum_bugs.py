"""The classic bugs of the curriculum's layers: convolution, pooling, spatial norms, softmax and
backpropagation through time, as catalogue entries (refbp.apps.bug_record.Bug).

Each entry swaps a layer for its twin with the wrong line (refbp.apps.curriculum_twins) and
draws the networks that can show it (refbp.apps.curriculum_cases): a padded convolution for
the unpadded input, a strided one for the ignored stride, overlapping windows for max-pool's
assignment, integer inputs, whose windows hold their maximum twice, for the tied maxima, a
sequence for BPTT. As for the other layers, equivalent variants compute the same numbers by
another route (col2im instead of a transposed convolution, the whole softmax Jacobian): no
checker can or should flag them.
"""

from __future__ import annotations

import copy
from functools import partial

from ..nn.conv import Conv2d
from ..nn.gru import GRULayer
from ..nn.layer import Layer
from ..nn.lstm import LSTMLayer
from ..nn.network import Network
from ..nn.norm2d import BatchNorm2d, GroupNorm
from ..nn.pool import AvgPool2d, MaxPool2d
from ..nn.recurrent import Recurrent
from ..nn.recurrent_layer import RecurrentLayer
from ..nn.rnn import RNNLayer
from ..nn.softmax import Softmax
from .bug_record import Bug, Rewire, swap, twin_of
from .curriculum_cases import (
    conv_stacks,
    group_norm_stacks,
    pool_stacks,
    recurrent_stacks,
    softmax_stacks,
    spatial_norm_stacks,
)
from .curriculum_twins import (
    AvgPoolOtherDivisor,
    BatchNorm2dOverNOnly,
    ConvDWFromUnpaddedInput,
    ConvDXByFold,
    ConvGroupsMixed,
    ConvKernelNotFlipped,
    ConvStrideIgnoredInDX,
    GroupNormChannelsInterleaved,
    GRUDropsNextStep,
    LSTMDropsNextStep,
    LSTMWithoutCellPath,
    MaxPoolAssigned,
    MaxPoolByFold,
    MaxPoolTiesBothCredited,
    RNNDropsNextStep,
    SoftmaxDiagonalOnly,
    SoftmaxFullJacobian,
)

__all__ = ["CURRICULUM_BUGS"]


def _twins(target: type[Layer], twin: type[Layer]) -> Rewire:
    """Every layer of class ``target`` swapped for its twin of class ``twin``."""
    return lambda net: swap(net, target, twin_of(twin))


def _cells(twins: dict[type[Layer], type[Layer]]) -> Rewire:
    """Every stacked layer of a recurrent layer (RNN, LSTM, GRU) swapped for its twin by class."""

    def twin(cell: RecurrentLayer) -> RecurrentLayer:
        made = twin_of(twins[type(cell)])(cell) if type(cell) in twins else cell
        assert isinstance(made, RecurrentLayer)
        return made

    def rewire(net: Network) -> Network:
        layers: list[Layer] = []
        for layer in net.layers:
            if isinstance(layer, Recurrent):
                outer = copy.copy(layer)  # the same stack, its own list of stacked layers
                outer.layers = [twin(cell) for cell in layer.layers]
                layer = outer
            layers.append(layer)
        return Network(layers, net.loss_fn, weight_decay=net.weight_decay)

    return rewire


_CONV = "a Conv2d"
_POOL = "a MaxPool2d whose windows overlap (stride < kernel)"
_SEQ = "an RNN, LSTM or GRU, T >= 2"
_DROPS: dict[type[Layer], type[Layer]] = {
    RNNLayer: RNNDropsNextStep, LSTMLayer: LSTMDropsNextStep, GRULayer: GRUDropsNextStep,
}  # fmt: skip
"""Each kind of stacked recurrent layer -> its twin that drops dJ/dh from step t + 1."""

CURRICULUM_BUGS: tuple[Bug, ...] = (
    Bug(
        "conv_dW_unpadded_input", "convolution's dJ/dW from the unpadded input", "Conv2d (2)",
        "dJ_dW[:, :, u, v] = sum dJ_dz * x[:, :, i s + u d, j s + v d]",
        "dJ_dW[:, :, u, v] = sum dJ_dz * x_pad[:, :, i s + u d, j s + v d]",
        "The forward pass slid the kernel over the padded input: window (i, j) read x_pad, whose row "
        "i s + u d is x's row i s + u d - p. Reading x itself shifts every window by the padding.",
        where=f"{_CONV} with padding > 0", specs=partial(conv_stacks, padded=True),
        rewire=_twins(Conv2d, ConvDWFromUnpaddedInput),
    ),
    Bug(
        "conv_stride_ignored_in_dx", "convolution's dJ/dx with the stride ignored", "Conv2d (3)",
        "dJ_dx = conv_transpose(dJ_dz, W, stride=1)", "dJ_dx = conv_transpose(dJ_dz, W, stride=s)",
        "Output (i, j) came from the window at (i s, j s): its gradient goes back there. With stride 1 "
        "the windows' gradients pile up at the wrong places, as if they were 1 apart.",
        where=f"{_CONV} with stride > 1", specs=partial(conv_stacks, strided=True),
        rewire=_twins(Conv2d, ConvStrideIgnoredInDX),
    ),
    Bug(
        "conv_kernel_not_flipped", "convolution's dJ/dx a correlation with the kernel unflipped", "Conv2d (3)",
        "dJ_dx = correlate(pad(dJ_dz), W)", "dJ_dx = correlate(pad(dJ_dz), flip(W))  (= conv_transpose(dJ_dz, W))",
        "x's entry at offset (u, v) of a window met W[u, v]; seen from x, the windows that read it lie "
        "in the opposite direction, so the full backward correlation takes the kernel rotated 180 degrees.",
        where=f"{_CONV}, a kernel larger than 1x1", specs=conv_stacks,
        rewire=_twins(Conv2d, ConvKernelNotFlipped),
    ),
    Bug(
        "conv_groups_mixed", "grouped convolution's dJ/dW with the channels grouped the wrong way", "Conv2d (2)",
        "dz_g = dJ_dz.view(N, C_out // G, G, L)[:, :, g]", "dz_g = dJ_dz.view(N, G, C_out // G, L)[:, g]",
        "Group g owns the output channels g C_out/G .. (g + 1) C_out/G - 1, a contiguous block; "
        "viewing the channels as (C_out/G, G) takes every G-th channel instead.",
        where=f"{_CONV} with groups G > 1, C_out / G > 1", specs=partial(conv_stacks, grouped=True),
        rewire=_twins(Conv2d, ConvGroupsMixed),
    ),
    Bug(
        "maxpool_assigned", "max-pool's dJ/dx assigned, not accumulated", "MaxPool2d",
        "dJ_dx[argmax] = dJ_dy", "dJ_dx[argmax] += dJ_dy",
        "Overlapping windows can share their maximum; the entry then moves both outputs and its "
        "gradient is the sum of both. Right only when windows do not overlap.",
        where=_POOL, specs=partial(pool_stacks, "maxpool", overlapping=True),
        rewire=_twins(MaxPool2d, MaxPoolAssigned),
    ),
    Bug(
        "maxpool_ties_both_credited", "max-pool's gradient to every tied maximum", "MaxPool2d",
        "dJ_dx[x == max] += dJ_dy", "dJ_dx[first argmax] += dJ_dy",
        "A window whose maximum is attained twice is a kink: torch credits the first maximum in scan "
        "order only. Crediting both doubles the gradient there (the max moves by one, not two).",
        where="a MaxPool2d on integer inputs (ties)", specs=partial(pool_stacks, "maxpool", ties=True),
        rewire=_twins(MaxPool2d, MaxPoolTiesBothCredited),
    ),
    Bug(
        "avgpool_divisor_ignores_padding", "average-pool's divisor of the other count_include_pad",
        "AvgPool2d", "dJ_dx = fold(dJ_dy / (k_h k_w))  with count_include_pad=False (or the count with True)",
        "dJ_dx = fold(dJ_dy / D),  D the divisor the forward pass used",
        "With count_include_pad=False a window over the padding averages its entries inside the input "
        "only (fewer than k_h k_w); the backward must divide by the same D as the forward pass.",
        where="an AvgPool2d with padding > 0", specs=partial(pool_stacks, "avgpool", padded=True),
        rewire=_twins(AvgPool2d, AvgPoolOtherDivisor),
    ),
    Bug(
        "batchnorm2d_over_n_only", "BatchNorm2d backward reduced over N only", "BatchNorm2d",
        "dJ_dx = rstd * (g - g.mean(0) - xhat * (g * xhat).mean(0))",
        "dJ_dx = rstd * (g - g.mean((0, 2, 3)) - xhat * (g * xhat).mean((0, 2, 3)))",
        "BatchNorm2d's statistics are each channel's over the batch and every position (N H W values); "
        "the means of the backward run over the same values. Over N only is right for BatchNorm1d.",
        where="a BatchNorm2d in training mode, H W >= 2", specs=spatial_norm_stacks,
        rewire=_twins(BatchNorm2d, BatchNorm2dOverNOnly),
    ),
    Bug(
        "groupnorm_wrong_axis", "GroupNorm backward with the channels grouped along the wrong axis", "GroupNorm",
        "g.view(N, C // G, G, -1).mean((1, 3))", "g.view(N, G, C // G, -1).mean((2, 3))",
        "Group g holds channels g C/G .. (g + 1) C/G - 1, a contiguous block; viewing the channel axis "
        "as (C/G, G) groups channels c, c + G, ... instead, another normalisation's statistics.",
        where="a GroupNorm, 1 < G < C", specs=group_norm_stacks,
        rewire=_twins(GroupNorm, GroupNormChannelsInterleaved),
    ),
    Bug(
        "softmax_jacobian_diagonal", "softmax backward with only the Jacobian's diagonal", "Softmax",
        "dJ_dx = dJ_ds * s * (1 - s)", "dJ_dx = s * (dJ_ds - (dJ_ds * s).sum(dim, keepdim=True))",
        "Every output s_j moves when one input x_i does (they share the denominator): J = diag(s) - s s^T. "
        "The diagonal alone is the elementwise sigmoid's derivative, not the softmax's.",
        where="a Softmax over >= 2 entries", specs=softmax_stacks, rewire=_twins(Softmax, SoftmaxDiagonalOnly),
    ),
    Bug(
        "bptt_drops_next_step", "BPTT without dJ/dh from the next step", "recurrent (R1)",
        "dJ_dh_t = dJ_dout_t", "dJ_dh_t = dJ_dout_t + dJ_dh_t_through_step_t_plus_1",
        "h_t is read by the output at t and by step t + 1; its gradient is the sum of both. Without the "
        "second, every weight sees one step of the past only.",
        where=_SEQ, specs=recurrent_stacks, rewire=_cells(_DROPS),
    ),
    Bug(
        "lstm_no_cell_path", "LSTM backward without the cell-state path", "LSTM (L5)",
        "dJ_dc_t = dJ_dh_t * o * (1 - tanh(c_t)**2)",
        "dJ_dc_t = dJ_dh_t * o * (1 - tanh(c_t)**2) + dJ_dc_next * f_next",
        "c_t is read by h_t and by c_(t+1) = f_(t+1) o c_t + ...; dropping the second path cuts the "
        "gradient's long-range highway, the reason the LSTM has a cell state.",
        where="an LSTM, T >= 2", specs=partial(recurrent_stacks, kinds=("lstm",)),
        rewire=_cells({LSTMLayer: LSTMWithoutCellPath}),
    ),
    # ---- equivalent variants: the same numbers by another route --------------------------------
    Bug(
        "conv_dx_by_fold", "convolution's dJ/dx by col2im", "Conv2d (3)",
        "dJ_dx = fold(W_g^T @ dJ_dz_g)", "dJ_dx = conv_transpose(dJ_dz, W)",
        "fold adds each window's column W^T dJ/dz back where the window was: the transposed convolution "
        "written as im2col's inverse, the same sums in another order.",
        where=_CONV, specs=partial(conv_stacks, same=True), rewire=_twins(Conv2d, ConvDXByFold), equivalent=True,
    ),
    Bug(
        "maxpool_by_fold", "max-pool's dJ/dx as a folded one-hot", "MaxPool2d",
        "dJ_dx = fold(one_hot(argmax) * dJ_dy)", "dJ_dx.scatter_add_(argmax, dJ_dy)",
        "fold adds up the windows that share an entry, as scatter_add does: the same sums.",
        where=_POOL, specs=partial(pool_stacks, "maxpool", overlapping=True),
        rewire=_twins(MaxPool2d, MaxPoolByFold), equivalent=True,
    ),
    Bug(
        "softmax_full_jacobian", "softmax backward through the whole Jacobian", "Softmax",
        "dJ_dx = (diag(s) - s s^T) @ dJ_ds", "dJ_dx = s * (dJ_ds - (dJ_ds * s).sum(dim, keepdim=True))",
        "The row-wise form is that matrix product multiplied out (J is symmetric): the same numbers, "
        "without a K x K matrix per slice.",
        where="a Softmax", specs=softmax_stacks, rewire=_twins(Softmax, SoftmaxFullJacobian), equivalent=True,
    ),
)  # fmt: skip
"""The curriculum's entries of the catalogue: classic bugs first, then equivalent variants."""
