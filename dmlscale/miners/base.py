"""Template for every miner: validate inputs -> resolve ref_emb -> mine (no autograd) -> check the tuple.

Signature and outputs follow pytorch-metric-learning: `miner(embeddings, labels, ref_emb=None,
ref_labels=None, *, query_ref_index=None)` returns a triplet tuple (a, p, n) or a pair tuple
(a1, p, a2, n) of long tensors; anchors index `embeddings`, positives/negatives index `ref_emb` (the batch itself when omitted).
`query_ref_index[i]` is the reference row holding query row i itself (-1: none; default arange(B)
without ref_emb, all -1 with it); self pairs are never positives. `mine(embeddings, labels, ref_emb,
ref_labels)` may also be called directly, as in PML: without query_ref_index the batch is its own
reference exactly when `ref_labels is labels` (PML's test).
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.distances import ModuleWithDistance
from dmlscale.inputs import resolve_inputs

_COUNT_STATS = ["num_pos_pairs", "num_neg_pairs", "num_triplets"]


class BaseMiner(ModuleWithDistance):
    """Base class: subclasses implement `mine(embeddings, labels, ref_emb, ref_labels, query_ref_index)`.

    As in PML, `num_pos_pairs`, `num_neg_pairs` and `num_triplets` are filled on every call (they
    are plain lengths, free to compute); other statistics need `collect_stats=True`.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_to_recordable_attributes(list_of_names=_COUNT_STATS, is_stat=True)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None, *,
                query_ref_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        self.reset_stats()
        if labels is None:
            raise ValueError(f"{type(self).__name__} needs labels; got labels=None")
        with torch.no_grad():
            embeddings, labels, ref_emb, ref_labels, query_ref_index = resolve_inputs(
                embeddings, labels, ref_emb, ref_labels, query_ref_index, check_shapes=self.distance.check_shapes
            )
            mined = self.mine(embeddings, labels, ref_emb, ref_labels, query_ref_index)
        self.record_counts(mined)
        return mined

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor, ref_labels: torch.Tensor,
             query_ref_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def record_counts(self, mined: tuple[torch.Tensor, ...]) -> None:
        """Check the tuple's arity and lengths, and store the counts."""
        if not isinstance(mined, tuple) or len(mined) not in (3, 4):
            raise ValueError(
                f"{type(self).__name__}.mine must return a tuple of 3 (a, p, n) or 4 (a1, p, a2, n) tensors, "
                f"got {type(mined).__name__} of length {len(mined) if hasattr(mined, '__len__') else '?'}"
            )
        lengths = [len(x) for x in mined]
        if len(mined) == 3:
            if len(set(lengths)) != 1:
                raise ValueError(f"{type(self).__name__}.mine returned triplets of unequal lengths {lengths}")
            self.num_triplets = lengths[0]
        else:
            if lengths[0] != lengths[1] or lengths[2] != lengths[3]:
                raise ValueError(f"{type(self).__name__}.mine returned pairs of unequal lengths {lengths}")
            self.num_pos_pairs, self.num_neg_pairs = lengths[0], lengths[2]


def empty_indices(device: torch.device | str, count: int) -> tuple[torch.Tensor, ...]:
    return tuple(torch.empty(0, dtype=torch.long, device=device) for _ in range(count))
