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
RNN             h_t = f(x_t W_ih^T + h_(t-1) W_hh^T + b),  nn.RNN (its output sequence passed
                f = tanh or relu; stacked; BPTT           on: refbp.nn.recurrent's TorchRNN)
LSTM            gates i f g o, cell state c_t; BPTT       nn.LSTM (likewise: TorchLSTM)
GRU             gates r z n; BPTT                         nn.GRU (likewise: TorchGRU)
=============== ========================================= ==================================
"""

from __future__ import annotations

from .batchnorm import BatchNorm1d
from .dense import Dense
from .dropout import Dropout
from .elementwise import Elementwise
from .embedding import Embedding
from .flatten import Flatten
from .layer import Layer
from .layernorm import LayerNorm
from .linear import Linear
from .recurrent import GRU, LSTM, RNN, recurrent_from_torch
from .recurrent_layer import TorchGRU, TorchLSTM, TorchRNN
from .residual import Residual, TorchResidual

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "BatchNorm1d",
    "Dense",
    "Dropout",
    "Elementwise",
    "Embedding",
    "Flatten",
    "Layer",
    "LayerNorm",
    "Linear",
    "Residual",
    "TorchGRU",
    "TorchLSTM",
    "TorchRNN",
    "TorchResidual",
    "recurrent_from_torch",
]
