"""Captions to token ids, with open_clip's tokenizer or a transformers tokenizer, one batch at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class TextEncoder:
    """Callable list[str] -> {"text": LongTensor B x L[, "attention_mask": LongTensor B x L]}.

    open_clip tokenizers (callables returning a tensor) pad to their own context length; transformers
    tokenizers are padded and truncated to `context_length`. A class, not a closure, so that
    DataLoader workers started with "spawn" can pickle it."""

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor] | PreTrainedTokenizerBase, *,
                 context_length: int = 77) -> None:
        if not callable(tokenizer):
            raise ValueError(f"tokenizer must be callable (open_clip or transformers), got {tokenizer!r}")
        self.tokenizer, self.context_length = tokenizer, context_length
        self.is_transformers = hasattr(tokenizer, "model_max_length") and hasattr(tokenizer, "pad_token_id")

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self.is_transformers:
            encoded = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.context_length,
                                     return_tensors="pt")
            return {"text": encoded["input_ids"].long(), "attention_mask": encoded["attention_mask"].long()}
        tokens = self.tokenizer(texts)
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.shape[0] != len(texts):
            raise ValueError(f"tokenizer must return a B x L tensor for B={len(texts)} texts, got "
                             f"{type(tokens).__name__} {getattr(tokens, 'shape', '')}")
        return {"text": tokens.long()}
