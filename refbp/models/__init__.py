"""Whole models built from refbp's layers: ``refbp.models.GPT`` (nanoGPT's, by hand) and its case
spec ``GPTSpec``, which importing this package registers with refbp.verify.specs."""

from __future__ import annotations

from .gpt import GPT, GPTConfig, GPTGradients, TorchGPT
from .gpt_cases import GPTSpec  # registers the GPT's spec kind with refbp.verify.specs

__all__ = ["GPT", "GPTConfig", "GPTGradients", "GPTSpec", "TorchGPT"]
