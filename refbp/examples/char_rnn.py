"""A character-level LSTM trained twice from the same start: with refbp's manual gradients
(backpropagation through time by hand), and with torch.autograd on the same network as a torch
module (``Network.to_torch()``: Embedding, LSTM, Linear).

    python -m refbp.examples.char_rnn               # 200 steps; writes reports/char_rnn.png and .json
    python -m refbp.examples.char_rnn --steps 50 --seed 2 --out /tmp

The text is the opening of Lewis Carroll's *Alice's Adventures in Wonderland* (1865, in the
public domain), written into this module. The network reads windows of T characters and
predicts, at every position, the next one: cross-entropy over the (B, T) positions of (B, T, V)
logits. Both runs see the same windows and step with the same optimizer (torch.optim.Adam) in
float64, so the two loss curves agree to float64 rounding; the end shows text the manually
trained network writes, one sampled character at a time.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.layers import LSTM, Embedding, Linear
from ..nn.lstm import LSTMLayer
from ..nn.network import Network
from ..nn.validation import check_int, check_seed
from .curves import ExampleParser, TrainingCurves, batches, curves_png, run_example, write_curves

__all__ = ["LEARNING_RATE", "STEPS", "TEXT", "CharRun", "main", "network", "sample", "train_char_rnn"]

TEXT = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing "
    "to do: once or twice she had peeped into the book her sister was reading, but it had no pictures or "
    "conversations in it, 'and what is the use of a book,' thought Alice 'without pictures or "
    "conversations?' So she was considering in her own mind (as well as she could, for the hot day made "
    "her feel very sleepy and stupid), whether the pleasure of making a daisy-chain would be worth the "
    "trouble of getting up and picking the daisies, when suddenly a White Rabbit with pink eyes ran close "
    "by her."
)
"""The training text: the first two paragraphs of Alice's Adventures in Wonderland, chapter 1."""

STEPS = 200
"""Adam steps: enough for the loss to fall from log V (about 3.5, a guess) to under a fifth of it,
in about 15 seconds for both runs."""

LEARNING_RATE = 1e-2
"""Adam's step: the loss falls steadily, and from seed 0 the two runs stay within 2e-15 (relative)
of each other for all 200 steps."""

BATCH, LENGTH, EMBED, HIDDEN = 8, 24, 16, 48
"""B windows of T characters per step; the embedding's width and the LSTM's hidden size."""


def network(vocab: int, *, seed: int = 0) -> Network:
    """Embedding(V, 16) -> LSTM(16 -> 48, batch_first) -> Linear(48 -> V), cross-entropy;
    float64, initialised as torch.nn does from ``seed``."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape: int, bound: float) -> Tensor:
        return torch.empty(shape, dtype=torch.float64).uniform_(-bound, bound, generator=generator)

    E = torch.randn(vocab, EMBED, dtype=torch.float64, generator=generator)  # torch.nn.Embedding's N(0, 1)
    k = 1 / math.sqrt(HIDDEN)
    cell = LSTMLayer(
        uniform(4 * HIDDEN, EMBED, bound=k), uniform(4 * HIDDEN, HIDDEN, bound=k),
        uniform(4 * HIDDEN, bound=k), uniform(4 * HIDDEN, bound=k), batch_first=True,
    )  # fmt: skip
    head = Linear(uniform(vocab, HIDDEN, bound=k), uniform(vocab, bound=k))
    return Network([Embedding(E), LSTM(cell), head], "cross_entropy")


@dataclass(frozen=True)
class CharRun:
    """Both loss curves and what was trained.

    Attributes:
        curves: J before each step, refbp's manual gradients and torch.autograd's.
        vocab: the characters, in token order.
        net: the manually trained network, after the last step.
    """

    curves: TrainingCurves
    vocab: str
    net: Network


def train_char_rnn(*, steps: int = STEPS, lr: float = LEARNING_RATE, seed: int = 0) -> CharRun:
    """Train ``network`` on TEXT twice from the same start."""
    check_int(steps, "steps", minimum=1, maximum=1 << 20)
    check_seed(seed, "seed")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr={lr!r} must be a positive step size")
    vocab = "".join(sorted(set(TEXT)))
    data = torch.tensor([vocab.index(c) for c in TEXT], dtype=torch.int64)  # (N,) the text as tokens
    net = network(len(vocab), seed=seed)
    module = net.to_torch()  # the same start: Embedding, LSTM (its output sequence), Linear

    def adam(params: list[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, foreach=False)

    # refbp: forward, loss and backward (through time) by hand; Adam reads the gradients from .grad
    params = net.parameters()  # the layers' own tensors: Adam updates them in place
    optimizer = adam(list(params.values()))
    manual: list[float] = []
    for _, (idx, targets) in zip(range(steps), batches(data, batch=BATCH, length=LENGTH, seed=seed + 1), strict=False):
        cache = net.forward(idx, keep_intermediates=False)
        manual.append(float(net.loss(cache, targets)))  # mean over the B T positions
        grads = net.backward(cache, targets, keep_intermediates=False, release_cache=True).as_dict()
        for name, p in params.items():
            p.grad = grads[name]
        optimizer.step()

    # torch: the module's forward, J.backward(), the same optimizer
    optimizer = adam(list(module.parameters()))
    automatic: list[float] = []
    for _, (idx, targets) in zip(range(steps), batches(data, batch=BATCH, length=LENGTH, seed=seed + 1), strict=False):
        optimizer.zero_grad()
        logits = module(idx)  # (B, T, V)
        J = F.cross_entropy(logits.reshape(-1, len(vocab)), targets.reshape(-1))  # over (B T) positions
        automatic.append(float(J.detach()))
        J.backward()
        optimizer.step()
    return CharRun(TrainingCurves(manual=manual, autograd=automatic), vocab, net)


def sample(run: CharRun, prompt: str = "Alice ", *, length: int = 120, seed: int = 0) -> str:
    """``prompt`` continued by ``length`` characters drawn one at a time from the network's
    softmax over the next character (refbp's forward pass over the last LENGTH characters)."""
    unknown = sorted(set(prompt) - set(run.vocab))
    if not prompt or unknown:
        raise ValueError(f"prompt={prompt!r} must be non-empty text of the training characters; {unknown} are not")
    generator = torch.Generator().manual_seed(seed)
    tokens = [run.vocab.index(c) for c in prompt]
    for _ in range(length):
        idx = torch.tensor([tokens[-LENGTH:]], dtype=torch.int64)  # (1, T)
        logits = run.net.forward(idx, keep_intermediates=False).y_hat[0, -1]  # (V,) the last position's
        p = torch.softmax(logits, dim=0)
        tokens.append(int(torch.multinomial(p, 1, generator=generator)))
    return "".join(run.vocab[k] for k in tokens)


def main(argv: list[str] | None = None) -> int:
    parser = ExampleParser(prog="python -m refbp.examples.char_rnn", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--lr", type=float, default=LEARNING_RATE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="reports", help="folder for char_rnn.png and .json (default reports)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small tensors: one thread is faster on a shared machine
    run = train_char_rnn(steps=args.steps, lr=args.lr, seed=args.seed)
    curves = run.curves
    print(f"text: {len(TEXT)} characters of Alice's Adventures in Wonderland, vocabulary of {len(run.vocab)}")
    print(f"J at step 0: {curves.manual[0]:.4f}, after {args.steps} steps: {curves.manual[-1]:.4f} (manual)")
    print(f"largest difference between the curves: {curves.max_abs_difference:.3e} absolute, "
          f"{curves.max_rel_difference:.3e} relative (float64 eps = {torch.finfo(torch.float64).eps:.3e})")  # fmt: skip
    text = sample(run, seed=args.seed)
    print(f"sampled from the manually trained network:\n  {text!r}")
    png = curves_png(
        curves, title=f"Character-level LSTM (hidden {HIDDEN}, vocab {len(run.vocab)}) on Alice in Wonderland",
        labels=("torch.autograd (Network.to_torch()) + Adam", "refbp manual gradients (BPTT) + Adam"),
        ylabel="J, cross-entropy per character", xlabel="Adam step (float64)",
    )  # fmt: skip
    about = {"example": "char_rnn", "steps": args.steps, "lr": args.lr, "seed": args.seed, "sample": text}
    for path in write_curves(Path(args.out), "char_rnn", curves, png, about):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_example(main))
