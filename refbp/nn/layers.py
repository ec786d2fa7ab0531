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
from .residual import Residual, TorchResidual

__all__ = [
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
    "TorchResidual",
]
