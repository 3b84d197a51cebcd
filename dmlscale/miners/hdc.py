"""Hard-aware deeply cascaded mining (Yuan et al. 2017, "Hard-Aware Deeply Cascaded Embedding").

Legend: P positive pairs, N negative pairs; pos_P / neg_N their distances (or similarities).

Of all positive pairs keep the ceil(filter_percentage * P) hardest (largest distance), of all negative
pairs the ceil(filter_percentage * N) hardest (smallest distance); mirrored for a similarity. The kept
pairs come hardest first (torch.topk order), as in PML.

Cascading: `set_idx_externally(indices_tuple, labels)` makes the next calls filter that tuple (and each
call's result) instead of all pairs, until `reset_idx()`; so several HDC miners with decreasing
filter_percentage can be chained, each refining the previous one's pairs.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dmlscale.indices import all_pairs, convert_to_pairs, implicit_self_index
from dmlscale.miners.base import BaseMiner
from dmlscale.param_checks import check_real


class HDCMiner(BaseMiner):
    """Pairs (a1, p, a2, n): the hardest `filter_percentage` of the positive and of the negative pairs.

    `self.a1, self.p, self.a2, self.n` hold the last result (PML's attributes).
    """

    def __init__(self, filter_percentage: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_real(type(self).__name__, "filter_percentage", filter_percentage, minimum=0)
        if filter_percentage > 1:
            raise ValueError(f"{type(self).__name__}: filter_percentage must be in [0, 1], got {filter_percentage!r}")
        self.filter_percentage = filter_percentage
        self.add_to_recordable_attributes(list_of_names=["filter_percentage"], is_stat=False)
        self.reset_idx()

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor, ref_labels: torch.Tensor,
             query_ref_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        query_ref_index = implicit_self_index(labels, ref_labels, query_ref_index)
        mat_BR = self.distance(embeddings, ref_emb)
        if not self.was_set_externally:
            self.a1, self.p, self.a2, self.n = all_pairs(labels, ref_labels, query_ref_index)
        # hardest positives: largest distance (smallest similarity); hardest negatives the opposite
        pos_largest = not self.distance.is_inverted
        if len(self.a1) > 0:
            keep_P = self.hardest(mat_BR[self.a1, self.p], largest=pos_largest)
            self.a1, self.p = self.a1[keep_P], self.p[keep_P]
        if len(self.a2) > 0:
            keep_N = self.hardest(mat_BR[self.a2, self.n], largest=not pos_largest)
            self.a2, self.n = self.a2[keep_N], self.n[keep_N]
        return self.a1, self.p, self.a2, self.n

    def hardest(self, values: torch.Tensor, *, largest: bool) -> torch.Tensor:
        """Positions of the ceil(filter_percentage * len) hardest values, hardest first."""
        num_kept = int(math.ceil(self.filter_percentage * len(values)))
        return torch.topk(values, k=num_kept, largest=largest).indices

    def set_idx_externally(self, external_indices_tuple: tuple, labels: torch.Tensor) -> None:
        """Filter this tuple (as pairs) from now on, instead of all pairs of the batch."""
        a1, p, a2, n = convert_to_pairs(external_indices_tuple, labels)
        self.a1, self.p, self.a2, self.n = (x.to(device=labels.device, dtype=torch.long) for x in (a1, p, a2, n))
        self.was_set_externally = True

    def reset_idx(self) -> None:
        """Forget any external tuple: the next call filters all pairs again."""
        self.a1, self.p, self.a2, self.n = None, None, None, None
        self.was_set_externally = False
