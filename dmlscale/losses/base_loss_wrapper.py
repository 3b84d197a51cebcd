"""The base of losses that wrap another loss (SelfSupervisedLoss), as PML's: it names the losses it supports
and refuses any other at construction."""

from __future__ import annotations

from typing import Any

import torch


class BaseLossWrapper(torch.nn.Module):
    """Checks at construction that the wrapped loss's class is one `supported_losses()` names."""

    def __init__(self, loss: torch.nn.Module, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check_loss_support(type(loss).__name__)

    @staticmethod
    def supported_losses() -> list[str]:
        raise NotImplementedError

    @classmethod
    def check_loss_support(cls, loss_name: str) -> None:
        if loss_name not in cls.supported_losses():
            raise ValueError(f"{cls.__name__} does not support {loss_name}; it wraps one of "
                             f"{sorted(cls.supported_losses())}")
