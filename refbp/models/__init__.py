"""Whole models built from refbp's layers: ``refbp.models.GPT`` (nanoGPT's, by hand)."""

from __future__ import annotations

from .gpt import GPT, GPTConfig, GPTGradients, TorchGPT

__all__ = ["GPT", "GPTConfig", "GPTGradients", "TorchGPT"]
