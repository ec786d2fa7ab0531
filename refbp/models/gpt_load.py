"""Reading a GPT's state dict: nanoGPT's or minGPT's names, the sizes inferred, biases all or
none, and whether the LM head is tied, each case explicit.

The LM head (``lm_head.weight``) decides between the two models a state dict can hold:

    absent                                      tied: nanoGPT's convention, the head is wte itself
    the same tensor as transformer.wte.weight   tied: nanoGPT (its state dict holds one tensor twice)
    equal values, another tensor                tied: a tied state dict whose tensors were copied
    other values                                untied: minGPT's head, a (V, d) weight of its own

``tied=True`` or ``tied=False`` states it instead: True refuses a head that differs from wte;
False refuses a state dict without a head, and loads even an equal one as a weight of its own
(its gradient is then the head's use only, not the sum of both uses).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from ..nn.validation import describe
from .gpt_config import HEAD_NAME, GPTConfig, checked_params

__all__ = ["COMPILED_PREFIX", "MASK_BUFFER", "head_is_tied", "read_state_dict", "strip_prefix"]

COMPILED_PREFIX = "_orig_mod."
"""What torch.compile puts before every name of a compiled module's state dict (nanoGPT's
train.py strips it the same way)."""

MASK_BUFFER = re.compile(r"transformer\.h\.\d+\.attn\.bias")
"""nanoGPT's attention keeps its causal mask as a buffer ``attn.bias`` when flash attention is
unavailable, minGPT's always (a (1, 1, block_size, block_size) lower triangle): not a parameter,
and ignored on loading (as nanoGPT's own from_pretrained does)."""


def strip_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The state dict with torch.compile's "_orig_mod." prefix taken off every name."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping name -> tensor, got {type(state_dict).__name__}")
    for name in state_dict:
        if not isinstance(name, str):
            raise TypeError(
                f"state_dict has the key {name!r} ({type(name).__name__}); expected str keys, nanoGPT's "
                "parameter names such as 'transformer.wte.weight'"
            )
    return {
        (name[len(COMPILED_PREFIX) :] if name.startswith(COMPILED_PREFIX) else name): t
        for name, t in state_dict.items()
    }


def _same_values(a: Tensor, b: Tensor) -> bool:
    """One tensor twice (the same storage, shape and strides), or equal values of one dtype and device."""
    if a is b:
        return True
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    if a.data_ptr() == b.data_ptr() and a.stride() == b.stride():
        return True
    return bool(a.eq(b).all())


def head_is_tied(sd: Mapping[str, Tensor], tied: bool | None) -> bool:
    """Whether ``sd``'s LM head is its token embedding (the module's table), or ``tied`` checked
    against ``sd`` when it is given."""
    if tied is not None and not isinstance(tied, bool):
        raise TypeError(f"tied={tied!r} must be True, False or None (None: read it from the state dict)")
    head, wte = sd.get(HEAD_NAME), sd["transformer.wte.weight"]
    if head is None:
        if tied is False:
            raise ValueError(
                "tied=False, but the state_dict has no 'lm_head.weight': an untied head needs a weight of its own"
            )
        return True  # nanoGPT's convention: no head in the state dict, the head is wte itself
    if not isinstance(head, Tensor):
        raise ValueError(f"state_dict['lm_head.weight'] must be a tensor, got {type(head).__name__}")
    same = _same_values(head, wte)
    if tied is None:
        return same
    if tied and not same:
        raise ValueError(
            f"tied=True, but lm_head.weight ({describe(head)}) differs from transformer.wte.weight "
            f"({describe(wte)}); leave tied=None to load it as an untied head (minGPT)"
        )
    return tied


def read_state_dict(
    state_dict: Mapping[str, Tensor],
    *,
    n_head: int,
    tied: bool | None = None,
    gelu: str = "exact",
    dropout: float = 0.0,
    embd_pdrop: float | None = None,
    attn_pdrop: float | None = None,
    resid_pdrop: float | None = None,
) -> tuple[GPTConfig, dict[str, Tensor]]:
    """The GPTConfig a nanoGPT or minGPT state dict describes (sizes inferred, biases all or none,
    the head tied or not: the module docstring's table) and its parameters, checked, under
    their names: mask buffers dropped, lm_head.weight dropped when tied. Nothing is copied."""
    sd = strip_prefix(state_dict)
    for name in ("transformer.wte.weight", "transformer.wpe.weight"):
        if name not in sd:
            raise ValueError(f"state_dict has no {name!r}; expected nanoGPT's names (transformer.wte.weight, ...)")
        if not isinstance(sd[name], Tensor) or sd[name].dim() != 2:
            got = describe(sd[name]) if isinstance(sd[name], Tensor) else type(sd[name]).__name__
            raise ValueError(f"state_dict[{name!r}] must be a 2-d tensor, got {got}")
    (V, d), block_size = sd["transformer.wte.weight"].shape, sd["transformer.wpe.weight"].shape[0]
    blocks = {int(m.group(1)) for name in sd if (m := re.match(r"transformer\.h\.(\d+)\.", name))}
    n_layer = max(blocks) + 1 if blocks else 0
    if n_layer == 0:
        raise ValueError("state_dict has no block (transformer.h.0.*): a GPT needs n_layer >= 1")
    every = GPTConfig(V, block_size, n_layer, 1, d, bias=True).shapes()
    bias_names = [name for name in every if name.endswith(".bias")]
    present = [name for name in bias_names if name in sd]
    if present and len(present) != len(bias_names):
        absent = [name for name in bias_names if name not in sd]
        raise ValueError(
            f"state_dict has {len(present)} of the {len(bias_names)} biases (missing: {absent[:4]}"
            f"{' ...' if len(absent) > 4 else ''}); nanoGPT has all of them (bias=True) or none (bias=False)"
        )
    if isinstance(n_head, bool) or not isinstance(n_head, int) or n_head < 1 or d % n_head:
        raise ValueError(f"n_head={n_head!r} must be an int >= 1 dividing n_embd = {d} (transformer.wte.weight's)")
    config = GPTConfig(
        V, block_size, n_layer, n_head, d, bias=bool(present), dropout=dropout, tied=head_is_tied(sd, tied),
        gelu=gelu, embd_pdrop=embd_pdrop, attn_pdrop=attn_pdrop, resid_pdrop=resid_pdrop,
    )  # fmt: skip
    kept = {name: t for name, t in sd.items() if not MASK_BUFFER.fullmatch(name)}
    checked_params(config, kept)  # names, shapes, dtypes and the tie, before anything is copied
    if config.tied:
        kept.pop(HEAD_NAME, None)  # the token embedding itself
    return config, kept
