"""MultipleLosses: a weighted sum of several losses on the same batch, each with an optional miner of its own.

Legend: B batch, D embedding size; emb_BD the embeddings, labels_B their labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


class MultipleLosses(torch.nn.Module):
    """PML's MultipleLosses: total = sum_k weights[k] * losses[k](embeddings, labels, indices_tuple_k).

    `losses` is a dict (name -> loss) or a list; `miners` the same kind of container: a dict naming some of
    the losses (the others get the indices_tuple given to forward), or a list as long as `losses` with None
    where a loss has no miner. With miners, forward takes no indices_tuple. `weights` (default 1 each) is a
    dict with exactly the losses' keys, or a list as long as `losses`. The losses run in their order.
    """

    def __init__(self, losses: Mapping[str, torch.nn.Module] | Sequence[torch.nn.Module],
                 miners: Mapping[str, torch.nn.Module] | Sequence[torch.nn.Module | None] | None = None,
                 weights: Mapping[str, float] | Sequence[float] | None = None) -> None:
        super().__init__()
        self.is_dict = isinstance(losses, Mapping)
        if not self.is_dict and not isinstance(losses, (list, tuple)):
            raise ValueError(f"MultipleLosses: losses must be a dict or a list of losses, got {type(losses).__name__}")
        if len(losses) == 0:
            raise ValueError("MultipleLosses: losses is empty; give at least one loss")
        self.losses = torch.nn.ModuleDict(losses) if self.is_dict else torch.nn.ModuleList(losses)
        if miners is not None:
            self._check_like_losses("miners", miners, all_keys=False)
            self.miners = torch.nn.ModuleDict(miners) if self.is_dict else torch.nn.ModuleList(miners)
        else:
            self.miners = None
        if weights is not None:
            self._check_like_losses("weights", weights, all_keys=True)
            self.weights = dict(weights) if self.is_dict else list(weights)
        else:
            self.weights = {k: 1 for k in self.losses.keys()} if self.is_dict else [1] * len(self.losses)

    def _check_like_losses(self, name: str, value: object, *, all_keys: bool) -> None:
        """`value` is laid out as the losses: a dict of their keys (all of them when all_keys), or a list of
        their length (PML asserts the same)."""
        if self.is_dict:
            if not isinstance(value, Mapping):
                raise ValueError(f"MultipleLosses: losses is a dict, so {name} must be a dict too, got "
                                 f"{type(value).__name__}")
            keys, loss_keys = set(value), set(self.losses.keys())
            if all_keys and keys != loss_keys:
                raise ValueError(f"MultipleLosses: {name} must have exactly the losses' keys {sorted(loss_keys)}, "
                                 f"got {sorted(keys)}")
            if not keys <= loss_keys:
                raise ValueError(f"MultipleLosses: {name} names {sorted(keys - loss_keys)}, which are not losses "
                                 f"(keys: {sorted(loss_keys)})")
        else:
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"MultipleLosses: losses is a list, so {name} must be a list too, got "
                                 f"{type(value).__name__}")
            if len(value) != len(self.losses):
                raise ValueError(f"MultipleLosses: {name} has {len(value)} entries for {len(self.losses)} losses")

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None,
                indices_tuple: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        if self.miners and indices_tuple is not None:
            raise ValueError("MultipleLosses: its miners make the indices tuples; pass indices_tuple=None")
        total = 0
        named = self.losses.items() if self.is_dict else enumerate(self.losses)
        for key, loss_fn in named:
            tuple_k = self.get_indices_tuple(key, embeddings, labels, indices_tuple)
            total = total + loss_fn(embeddings, labels, tuple_k) * self.weights[key]
        return total

    def get_indices_tuple(self, key: str | int, embeddings: torch.Tensor, labels: torch.Tensor | None,
                          indices_tuple: tuple[torch.Tensor, ...] | None) -> tuple[torch.Tensor, ...] | None:
        """The tuple loss `key` sees: its miner's, if it has one, else the one given to forward."""
        if self.miners:
            has_miner = key in self.miners if self.is_dict else self.miners[key] is not None
            if has_miner:
                return self.miners[key](embeddings, labels)
        return indices_tuple
