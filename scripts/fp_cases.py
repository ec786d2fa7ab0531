"""The case families of the false-positive measurement (scripts/false_positive_rate.py): every
one a correct network at a random point, drawn from a seed, as a ``Drawn`` the parts check.

- the report's own sweep (refbp.apps.sweep.sweep_specs): MLPs in every regime, layer stacks,
  CNNs, recurrent stacks, tiny GPTs (minGPT variants among them); one stack in four built with
  ``reduction="sum"`` (``with_sum_reduction``), which the sweep itself never draws;
- makemore's MLP (``makemore_case``): Embedding, Flatten, Linear without bias,
  ``BatchNorm1d(unbiased=True)``, tanh, Linear: the Bessel-corrected batch norm no StackSpec
  can describe;
- users' own torch models (``TORCH_MODELS``, in turn by seed): an ``nn.Embedding`` with a
  ``padding_idx`` that occurs and a training-mode ``nn.Dropout`` (masks captured with
  ``refbp.capture_noise``); a CNN (Conv2d, pooling, BatchNorm2d or GroupNorm); a character
  model (Embedding, LSTM/GRU/RNN, Linear on every step). Converted by ``refbp.from_torch``;
  their gradients are torch's own autograd on the module.

Each ``Drawn`` names what it contains (``components``, in the vocabulary of the sweep's
coverage table, refbp.verify.stacks' kinds) and its loss, for the coverage tables.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import refbp
from refbp.apps.sweep import Spec
from refbp.models.gpt_cases import GPTSpec
from refbp.nn.activations import ACTIVATIONS
from refbp.nn.batchnorm import BatchNorm1d
from refbp.nn.elementwise import Elementwise
from refbp.nn.embedding import Embedding
from refbp.nn.flatten import Flatten
from refbp.nn.linear import Linear
from refbp.nn.losses import get_loss
from refbp.nn.network import Network
from refbp.verify.cases import CaseSpec
from refbp.verify.stacks import StackSpec

__all__ = [
    "SUM_SHARE",
    "TORCH_MODELS",
    "Drawn",
    "from_spec",
    "group_of",
    "makemore_case",
    "torch_components",
    "with_sum_reduction",
]

SUM_SHARE = 0.25
"""The share of the sweep's layer stacks rebuilt with ``reduction="sum"`` (drawn from each
stack's own seed, so the rest of the sweep is unchanged)."""


@dataclass
class Drawn:
    """One correct network at a point, and what the coverage tables count it under.

    Attributes:
        group: the breakdown it counts under ("MLP, plain", "CNN stack (train)", ...).
        spec: JSON that names the case (a sweep spec, or {"makemore": seed, ...}).
        net, X, y: the network and the point.
        components: the layer kinds it contains ("conv2d", "batchnorm (train)", ...).
        loss: the loss and its reduction ("mse", "cross_entropy (sum)").
        seed: the check's seed.
        grads, noise: a user's own gradients (torch's autograd on the module) and dropout masks,
            for the torch models; None: refbp's own backward pass is checked.
    """

    group: str
    spec: dict[str, Any]
    net: Network
    X: Tensor
    y: Tensor
    components: list[str]
    loss: str
    seed: int
    grads: dict[str, Tensor] | None = None
    noise: Any = field(default=None)


def group_of(spec: Spec) -> str:
    """The breakdown a sweep case counts under: its kind and, for an MLP, its regime; a stack of
    images or sequences (its input's shape, or a recurrent layer) as a CNN or recurrent stack."""
    if isinstance(spec, GPTSpec):
        return "GPT (train)" if spec.training else "GPT (eval)"
    if not isinstance(spec, CaseSpec):
        kinds = {layer[0] for layer in spec.layers}
        what = "recurrent stack" if kinds & {"rnn", "lstm", "gru"} else "CNN stack" if len(spec.shape) > 1 else "stack"
        return f"{what} ({'train' if spec.training else 'eval'})"
    if spec.regime != "plain":
        return f"MLP, {spec.regime}"
    return "MLP, weights x10" if spec.weight_scale >= 10 else "MLP, plain"


def _loss_label(loss: str, reduction: object) -> str:
    return loss if reduction in (None, "mean") else f"{loss} ({reduction})"


def with_sum_reduction(spec: Spec) -> Spec:
    """One layer stack in four (by its own seed) with ``reduction="sum"``; others unchanged."""
    if not isinstance(spec, StackSpec) or spec.loss == "half_sse":  # half_sse sums already
        return spec
    return dataclasses.replace(spec, reduction="sum") if random.Random(spec.seed).random() < SUM_SHARE else spec


def from_spec(spec: Spec) -> Drawn:
    """A sweep case, built as refbp.apps.sweep.check_case builds it."""
    case = spec.build()
    data = json.loads(spec.to_json())
    return Drawn(
        group_of(spec), data, case.net, case.X, case.y, spec.components(),
        _loss_label(spec.loss, data.get("reduction")), spec.seed,
    )  # fmt: skip


def makemore_case(seed: int, dtype: str) -> Drawn:
    """makemore's MLP (part 3): C[idx] flattened, a Linear without bias, BatchNorm1d normalising
    with the unbiased batch variance (refbp's option; torch has no module for it), tanh, a Linear
    to the vocabulary; cross-entropy. Training mode in two of three (a batch of 2 or more)."""
    g = torch.Generator().manual_seed(seed)

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (), generator=g))

    def uniform(*shape: int, low: float = -1.0, high: float = 1.0) -> Tensor:
        return torch.empty(shape, dtype=torch.float64).uniform_(low, high, generator=g)

    V, T, d, H, N = draw(3, 8), draw(1, 3), draw(1, 4), draw(2, 8), draw(2, 6)
    training = draw(0, 2) > 0
    layers = [
        Embedding(torch.randn(V, d, dtype=torch.float64, generator=g)),
        Flatten(),
        Linear(uniform(H, T * d) / (T * d) ** 0.5, None),
        BatchNorm1d(
            uniform(H, low=0.5, high=1.5),
            uniform(H, low=-0.5, high=0.5),
            C=H,
            running_mean=uniform(H, low=-0.5, high=0.5),
            running_var=uniform(H, low=0.5, high=1.5),
            unbiased=True,
        ),
        Elementwise(ACTIVATIONS["tanh"]),
        Linear(uniform(V, H) / H**0.5, uniform(V) / H**0.5),
    ]
    net = Network(layers, get_loss("cross_entropy")).to(dtype=getattr(torch, dtype)).train(training)
    idx = torch.randint(0, V, (N, T), generator=g)  # (N, T) the previous T characters
    y = torch.randint(0, V, (N,), generator=g)  # (N,) the next one
    mode = "train" if training else "eval"
    spec = {"makemore": seed, "dtype": dtype, "describe": f"V={V} T={T} d={d} H={H} N={N} {mode}"}
    components = ["embedding", "flatten", "linear", f"batchnorm unbiased ({mode})", "tanh"]
    return Drawn(f"makemore MLP, BatchNorm1d unbiased ({mode})", spec, net, idx, y, components, "cross_entropy", seed)


_TORCH_KINDS: dict[type[nn.Module], str] = {
    nn.Embedding: "embedding", nn.Flatten: "flatten", nn.LayerNorm: "layernorm", nn.Linear: "linear",
    nn.Tanh: "tanh", nn.GELU: "gelu", nn.Sigmoid: "sigmoid", nn.SiLU: "silu", nn.ReLU: "relu",
    nn.Conv2d: "conv2d", nn.MaxPool2d: "maxpool", nn.AvgPool2d: "avgpool", nn.GroupNorm: "groupnorm",
    nn.LSTM: "lstm", nn.GRU: "gru", nn.RNN: "rnn",
}  # fmt: skip
_MODED: dict[type[nn.Module], str] = {nn.Dropout: "dropout", nn.BatchNorm2d: "batchnorm2d"}


def torch_components(module: nn.Module) -> list[str]:
    """A torch model's modules in the sweep's vocabulary (dropout and batch norm with their mode)."""
    found = set()
    for m in module.modules():
        if type(m) in _MODED:
            found.add(f"{_MODED[type(m)]} ({'train' if m.training else 'eval'})")
        elif type(m) in _TORCH_KINDS:
            found.add(_TORCH_KINDS[type(m)])
    return sorted(found)


def _torch_gradients(net: Network, module: nn.Module) -> dict[str, Tensor]:
    """The module's autograd gradients under refbp's names (zeros where torch left none)."""
    named = dict(module.named_parameters())
    out = {}
    for name, torch_names in net.torch_parameter_names().items():
        p = named[torch_names[0]]
        out[name] = p.grad if p.grad is not None else torch.zeros_like(p)  # J does not depend on it: 0
    return out


def _drawn(group: str, seed: int, dtype: str, module: nn.Module, net: Network, X: Tensor, y: Tensor) -> Drawn:
    spec = {"torch_model": seed, "dtype": dtype, "module": repr(module).replace("\n", "")}
    return Drawn(group, spec, net, X, y, torch_components(module), "cross_entropy", seed)


def _draws(seed: int) -> tuple[torch.Generator, Callable[[int, int], int]]:
    g = torch.Generator().manual_seed(seed)

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (), generator=g))

    return g, draw


def embedding_model_case(seed: int, dtype: str) -> Drawn:
    """A user's torch model: an ``nn.Embedding(padding_idx=...)`` whose padding token occurs,
    LayerNorm or not, an activation, a training-mode Dropout whose masks are captured."""
    g, draw = _draws(seed)
    V, d, T, width, classes, N = draw(3, 12), draw(1, 6), draw(1, 4), draw(1, 10), draw(2, 5), draw(1, 6)
    padding_idx = draw(0, V - 1)
    activation = [nn.Tanh, nn.GELU, nn.Sigmoid, nn.SiLU][draw(0, 3)]()
    torch.manual_seed(seed)  # the module's parameters and, below, torch's dropout masks
    modules: list[nn.Module] = [nn.Embedding(V, d, padding_idx=padding_idx), nn.Flatten()]
    if draw(0, 1):
        modules.append(nn.LayerNorm(T * d))
    modules += [nn.Linear(T * d, width), activation, nn.Dropout(0.1 + 0.4 * draw(0, 4) / 4), nn.Linear(width, classes)]
    module = nn.Sequential(*modules).to(getattr(torch, dtype)).train()
    idx = torch.randint(0, V, (N, T), generator=g)
    idx[draw(0, N - 1), draw(0, T - 1)] = padding_idx  # the padding token occurs
    y = torch.randint(0, classes, (N,), generator=g)
    net = refbp.from_torch(module, loss="cross_entropy")
    noise = refbp.capture_noise(module, idx)
    nn.functional.cross_entropy(module(idx), y).backward()  # torch's own step, drawing those very masks
    drawn = _drawn("torch model (padding_idx, dropout, captured noise)", seed, dtype, module, net, idx, y)
    drawn.grads, drawn.noise = _torch_gradients(net, module), noise
    return drawn


def cnn_model_case(seed: int, dtype: str) -> Drawn:
    """A user's CNN: Conv2d (stride, padding, dilation, groups), ReLU, MaxPool2d or AvgPool2d,
    BatchNorm2d (training or eval, running statistics away from 0 and 1) or GroupNorm, Flatten,
    Linear; torch's autograd gradients of cross-entropy, dJ/dX included."""
    g, draw = _draws(seed)
    C, H, W, classes = draw(1, 3), draw(3, 6), draw(3, 6), draw(2, 4)
    divisors = [k for k in range(1, C + 1) if C % k == 0]
    groups = divisors[draw(0, len(divisors) - 1)]
    C_out = groups * draw(1, 2)
    kernel, padding, dilation = draw(1, 3), draw(0, 1), draw(1, 2)
    if dilation * (kernel - 1) + 1 > min(H, W) + 2 * padding:  # the dilated kernel must fit
        dilation = 1
    torch.manual_seed(seed)  # the module's parameters
    conv = nn.Conv2d(C, C_out, kernel, stride=draw(1, 2), padding=padding, dilation=dilation, groups=groups)
    with torch.no_grad():
        probe = conv(torch.zeros(1, C, H, W))
    h, w = probe.shape[2:]
    modules: list[nn.Module] = [conv, nn.ReLU()]
    if min(h, w) >= 2 and draw(0, 2):
        k = draw(2, min(3, h, w))
        pool = (
            nn.MaxPool2d(k, stride=draw(1, k), padding=draw(0, k // 2))
            if draw(0, 1)
            else nn.AvgPool2d(k, stride=draw(1, k), padding=draw(0, k // 2), count_include_pad=bool(draw(0, 1)))
        )
        modules.append(pool)
        with torch.no_grad():
            h, w = pool(probe).shape[2:]
    training = bool(draw(0, 1))
    norm: nn.Module | None = None
    if draw(0, 1):
        norm = nn.BatchNorm2d(C_out)
        assert norm.running_mean is not None and norm.running_var is not None
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5, generator=g)
            norm.bias.uniform_(-0.5, 0.5, generator=g)
            norm.running_mean.uniform_(-0.5, 0.5, generator=g)
            norm.running_var.uniform_(0.5, 1.5, generator=g)
    else:  # torch normalises groups of two values or more
        counts = [k for k in range(1, C_out + 1) if C_out % k == 0 and (C_out // k) * h * w >= 2]
        norm = nn.GroupNorm(counts[draw(0, len(counts) - 1)], C_out) if counts else None
    if norm is not None:
        modules.append(norm)
    modules += [nn.Flatten(), nn.Linear(C_out * h * w, classes)]
    N = draw(2 if isinstance(norm, nn.BatchNorm2d) and training else 1, 3)
    module = nn.Sequential(*modules).to(getattr(torch, dtype)).train(training)
    X = torch.empty(N, C, H, W).uniform_(-2.0, 2.0, generator=g).to(getattr(torch, dtype))
    y = torch.randint(0, classes, (N,), generator=g)
    net = refbp.from_torch(module, loss="cross_entropy")  # before torch's step updates the running statistics
    X_leaf = X.clone().requires_grad_(True)
    nn.functional.cross_entropy(module(X_leaf), y).backward()
    drawn = _drawn(f"torch CNN ({'train' if training else 'eval'})", seed, dtype, module, net, X, y)
    assert X_leaf.grad is not None
    drawn.grads = {**_torch_gradients(net, module), "X": X_leaf.grad}
    return drawn


def recurrent_model_case(seed: int, dtype: str) -> Drawn:
    """A user's character model: Embedding, an LSTM, GRU or RNN (tanh or relu) of 1-2 layers,
    batch_first either way, a Linear on every step; torch's autograd gradients of cross-entropy
    over every step (the module called as a user does: rnn(...)[0])."""
    g, draw = _draws(seed)
    V, d, H, T, N, layers = draw(3, 8), draw(1, 4), draw(1, 4), draw(1, 4), draw(1, 3), draw(1, 2)
    kind = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"][draw(0, 3)]
    torch.manual_seed(seed)
    options: dict[str, Any] = {"num_layers": layers, "batch_first": bool(draw(0, 1))}
    if kind.startswith("RNN"):
        cell: nn.Module = nn.RNN(d, H, nonlinearity=kind.removeprefix("RNN_").lower(), **options)
    else:
        cell = (nn.LSTM if kind == "LSTM" else nn.GRU)(d, H, **options)
    module = nn.Sequential(nn.Embedding(V, d), cell, nn.Linear(H, V)).to(getattr(torch, dtype))
    idx = torch.randint(0, V, (N, T), generator=g)
    y = torch.randint(0, V, (N, T), generator=g)
    net = refbp.from_torch(module, loss="cross_entropy")
    embedding, rnn, head = module
    logits = head(rnn(embedding(idx))[0])  # (N, T, V): the output sequence, as a user's forward takes it
    nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1)).backward()
    drawn = _drawn(f"torch recurrent ({kind})", seed, dtype, module, net, idx, y)
    drawn.grads = _torch_gradients(net, module)
    return drawn


TORCH_MODELS: tuple[Callable[[int, str], Drawn], ...] = (embedding_model_case, cnn_model_case, recurrent_model_case)
"""The users' models, in turn by seed: embedding and dropout, CNN, recurrent."""
