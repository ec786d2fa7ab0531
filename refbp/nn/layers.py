"""Every layer refbp differentiates by hand, in one place (each is defined in its own module).

=============== ========================================= ==================================
layer           forward                                   torch module (``from_torch``)
=============== ========================================= ==================================
Dense           z = x W^T + b, a = f(z)   (the MLP's)     Linear followed by an activation
Linear          y = x W^T (+ b), any leading dims         nn.Linear
Elementwise     a = f(x), any activation record           nn.Sigmoid, Tanh, ReLU, LeakyReLU,
                                                          Softplus, GELU, SiLU, ELU, Identity
LayerNorm       normalise each row, gamma o xhat + beta   nn.LayerNorm (last dimension)
BatchNorm1d     normalise each feature over the batch     nn.BatchNorm1d on (N, C)
Dropout         x o m / (1 - p), refbp's seeded masks     nn.Dropout
Embedding       E[idx]                                    nn.Embedding
Flatten         merge dimensions                          nn.Flatten
Residual        x + F(x)                                  refbp.nn.residual.TorchResidual
Conv1d, Conv2d  cross-correlation; dJ/dW by im2col,       nn.Conv1d, nn.Conv2d (zero padding)
                dJ/dx a transposed convolution
MaxPool2d       max of each window; ties: the first       nn.MaxPool2d (ceil_mode=False)
AvgPool2d       mean of each window                       nn.AvgPool2d (ceil_mode=False)
AdaptiveAvgPool2d
                mean of torch's adaptive windows          nn.AdaptiveAvgPool2d
BatchNorm2d     BatchNorm1d over N H W per channel        nn.BatchNorm2d
GroupNorm       LayerNorm of each image's channel groups  nn.GroupNorm
Softmax         exp(x) / sum exp(x) along dim             nn.Softmax
LogSoftmax      x - log sum exp(x) along dim              nn.LogSoftmax
RNN             h_t = f(x_t W_ih^T + h_(t-1) W_hh^T + b),  nn.RNN (its output sequence passed
                f = tanh or relu; stacked; BPTT           on: refbp.nn.recurrent's TorchRNN)
LSTM            gates i f g o, cell state c_t; BPTT       nn.LSTM (likewise: TorchLSTM)
GRU             gates r z n; BPTT                         nn.GRU (likewise: TorchGRU)
=============== ========================================= ==================================
"""

from __future__ import annotations

from .batchnorm import BatchNorm1d
from .conv import Conv1d, Conv2d
from .dense import Dense
from .dropout import Dropout
from .elementwise import Elementwise
from .embedding import Embedding
from .flatten import Flatten
from .layer import Layer
from .layernorm import LayerNorm
from .linear import Linear
from .norm2d import BatchNorm2d, GroupNorm
from .pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .recurrent import GRU, LSTM, RNN, recurrent_from_torch
from .recurrent_layer import TorchGRU, TorchLSTM, TorchRNN
from .residual import Residual, TorchResidual
from .softmax import LogSoftmax, Softmax

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv1d",
    "Conv2d",
    "Dense",
    "Dropout",
    "Elementwise",
    "Embedding",
    "Flatten",
    "GroupNorm",
    "Layer",
    "LayerNorm",
    "Linear",
    "LogSoftmax",
    "MaxPool2d",
    "Residual",
    "Softmax",
    "TorchGRU",
    "TorchLSTM",
    "TorchRNN",
    "TorchResidual",
    "recurrent_from_torch",
]
