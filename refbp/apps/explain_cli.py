"""``refbp explain``'s command line: which network to walk, checked before anything is drawn.

    refbp explain                                   # the seed's 2-3-1 MLP (refbp.apps.explain)
    refbp explain --dims 3,4,2 --activations tanh,identity --loss mse --seed 1 --layout columns
    refbp explain --stack '{"input": 3, "layers": [["linear", 2]], "loss": "mse"}'   # refbp.apps.walk
    refbp explain --model gpt --seed 3 --batch 2
    refbp explain --model cnn                       # im2col and max-pool (refbp.apps.explain_cnn)
    refbp explain --model lstm --seed 4             # BPTT step by step (refbp.apps.explain_lstm)

Every option is checked first and a bad one is a ValueError/TypeError naming it (the command
prints one ``error:`` line and exits 2): an option that does not apply to the network chosen
(``--dims`` with ``--model``), a loss the model cannot take, a batch or seed out of range, a
network too large for memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from ..nn.layouts import LAYOUTS
from ..nn.validation import check_int, check_seed
from ..verify.cases import check_dims, check_network_fits
from ..verify.specs import Spec, spec_from_dict
from .check_cli import parse_spec_json, read_spec
from .explain import walkthrough
from .explain_cnn import cnn_walkthrough
from .explain_guided import GuidedWalk
from .explain_lstm import lstm_walkthrough
from .explain_order2 import explain_order2
from .walk import BUILT_IN, NetworkWalk, walk_network

__all__ = ["BUILT_IN_MODELS", "GUIDED_MODELS", "MAX_BATCH", "add_arguments", "run"]

BUILT_IN_MODELS = {
    "layers": "Linear, LayerNorm, tanh, Residual, BatchNorm1d, Dropout, Linear; mse",
    "gpt": "a GPT: token and position embeddings, one block of causal self-attention (2 heads) and a GELU MLP, "
    "final LayerNorm, tied LM head; cross-entropy",
    "cnn": "Conv2d, relu, MaxPool2d, Flatten, Linear on 4x4 images; cross-entropy; im2col and argmax shown",
    "lstm": "a 1-layer LSTM over T=3 steps and a Linear head; cross-entropy; BPTT step by step",
}
"""Networks ``refbp explain --model`` walks (refbp.apps.walk.BUILT_IN, and GUIDED_MODELS)."""

GUIDED_MODELS: dict[str, Callable[..., GuidedWalk]] = {"cnn": cnn_walkthrough, "lstm": lstm_walkthrough}
"""Models walked in the chain rule's order with their own equations (refbp.apps.explain_cnn,
explain_lstm), each called with ``seed=`` and ``batch=``; both are trained with cross_entropy."""

MAX_BATCH = 1 << 16
"""Most observations (rows of X, or sequences of a GPT) a walk-through shows: it prints every
quantity, so past a few dozen rows only the summaries remain; the bound stops a typo from
allocating gigabytes before the memory check could even see the network."""

_SEED_MLP_OPTIONS = ("dims", "activations", "layout")
"""Options that describe the seed's MLP only: refused with --spec, --stack or --model."""


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ints, e.g. 2,3,1") from None


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dims", type=_int_list, default=None, help="layer sizes d_0,...,d_L (default 2,3,1)")
    parser.add_argument(
        "--activations", type=_name_list, default=None, help="one per layer, or one for all (default sigmoid)"
    )
    parser.add_argument("--loss", default=None, help="half_sse (default), mse, bce or cross_entropy")
    parser.add_argument(
        "--seed", type=int, default=None, help="draws the parameters and the point, 0 to 2**32 - 1 (default 0)"
    )
    parser.add_argument("--batch", type=int, default=None, help="N, the number of observations (default 2)")
    parser.add_argument(
        "--layout", default=None, choices=list(LAYOUTS),
        help="torch (one observation per row, default) or columns (the seed's z = W a + b); in_out is torch's walk",
    )  # fmt: skip
    parser.add_argument("--spec", help="walk the network a JSON file describes (as refbp check --spec reads)")
    parser.add_argument("--stack", help="the same JSON, inline (as refbp check --case takes)")
    parser.add_argument("--model", choices=sorted(BUILT_IN_MODELS), help="walk a built-in network: " + ", ".join(
        f"{name} ({text})" for name, text in sorted(BUILT_IN_MODELS.items())))  # fmt: skip
    parser.add_argument(
        "--order", type=int, choices=(1, 2), default=1,
        help="2: the R-operator on the seed's network (tangents, R{dJ/d.}, H v), each checked by torch",
    )  # fmt: skip
    parser.add_argument("--markdown", action="store_true", help="emit the same walk-through as Markdown")
    parser.add_argument("--ascii", action="store_true", help="[ok]/[FAIL] instead of check marks")


def run(args: argparse.Namespace) -> int:
    """Print the walk-through; 0 when every step agrees with torch, 1 otherwise. The options
    are checked first: a seed torch would alias, an option the chosen network cannot take, or a
    network too deep or too large for memory is refused before anything is drawn."""
    seed = 0 if args.seed is None else check_seed(args.seed, "--seed")
    if args.batch is not None:
        check_int(args.batch, "--batch", minimum=1, maximum=MAX_BATCH)
    w: Any
    if args.order == 2:
        given = {
            "--dims": args.dims, "--activations": args.activations, "--loss": args.loss, "--batch": args.batch,
            "--spec": args.spec, "--stack": args.stack, "--model": args.model, "--layout": args.layout,
        }  # fmt: skip
        others = [option for option, value in given.items() if value is not None]
        if others:
            raise ValueError(f"--order 2 walks the seed's network; it takes no {', '.join(others)}")
        w = explain_order2(seed)
    elif args.model in GUIDED_MODELS and args.spec is None and args.stack is None:
        w = _walk_guided(args, seed)
    elif args.spec is not None or args.stack is not None or args.model is not None:
        w = _walk_other(args)
    else:
        dims = check_dims([2, 3, 1] if args.dims is None else args.dims, "--dims")
        batch = 2 if args.batch is None else args.batch
        check_network_fits(dims, batch, "the --dims network")
        w = walkthrough(
            dims=dims, activations=args.activations, loss="half_sse" if args.loss is None else args.loss, seed=seed,
            batch=batch, layout=args.layout or "torch",
        )  # fmt: skip
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "✓✗".encode(encoding)
        ascii_only = bool(args.ascii)
    except (UnicodeEncodeError, LookupError):
        ascii_only = True
    sys.stdout.write(w.render(markdown=args.markdown, ascii_only=ascii_only))
    return 0 if w.passed else 1


def _refuse_seed_mlp_options(args: argparse.Namespace, where: str) -> None:
    for option in _SEED_MLP_OPTIONS:
        if getattr(args, option) is not None:
            raise ValueError(f"--{option} describes the seed's MLP; {where} brings its own network (drop --{option})")


def _walk_guided(args: argparse.Namespace, seed: int) -> GuidedWalk:
    """The guided walk of --model cnn or lstm, with --seed and --batch (its own default batch)."""
    where = f"--model {args.model}"
    _refuse_seed_mlp_options(args, where)
    if args.loss is not None and args.loss != "cross_entropy":
        raise ValueError(f"--loss {args.loss}: {where} is trained with cross_entropy; it takes no other loss")
    options = {"seed": seed} if args.batch is None else {"seed": seed, "batch": args.batch}
    return GUIDED_MODELS[args.model](**options)


def _walk_other(args: argparse.Namespace) -> NetworkWalk:
    """The walk through a --spec file, a --stack spec or a --model (refbp.apps.walk), in float64."""
    given = [option for option in ("spec", "stack", "model") if getattr(args, option) is not None]
    if len(given) > 1:
        raise ValueError(f"--{given[0]} and --{given[1]}: give one network to walk, not two")
    where = f"--{given[0]}" + (f" {args.model}" if args.model is not None else "")
    _refuse_seed_mlp_options(args, where)
    if args.model is not None:
        spec = _model_spec(args, where)
    else:
        for option in ("seed", "batch", "loss"):
            if getattr(args, option) is not None:
                raise ValueError(f"--{option}: {where} carries its own {option}; set it in the JSON instead")
        text, where = (read_spec(args.spec), f"--spec {args.spec}") if args.spec else (args.stack, "--stack")
        try:
            spec = spec_from_dict({**parse_spec_json(text, where), "dtype": "float64"})
        except (ValueError, TypeError) as err:
            raise type(err)(f"{where}: {err}") from None
    try:
        case = spec.build()
    except (ValueError, TypeError) as err:
        raise type(err)(f"{where}: {err}") from None
    return walk_network(case.net, case.X, case.y, description=spec.describe())


def _model_spec(args: argparse.Namespace, where: str) -> Spec:
    """The built-in model's spec with --seed and --batch applied, checked as a spec from outside is."""
    spec = BUILT_IN[args.model]
    if args.loss is not None and args.loss != spec.loss:
        raise ValueError(f"--loss {args.loss}: {where} is trained with {spec.loss}; it takes no other loss")
    data = spec.to_dict()
    if args.seed is not None:
        data["seed"] = args.seed
    if args.batch is not None:
        data["batch"] = args.batch
    try:
        return spec_from_dict(json.loads(json.dumps(data)))
    except (ValueError, TypeError) as err:
        raise type(err)(f"{where}: {err}") from None
