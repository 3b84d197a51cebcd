"""GenericPairLoss: the shared pair-extraction step of the pair losses, and the test for their streamed path.

Legend: B queries, R references, P positive pairs, N negative pairs; mat_BR the distance matrix,
pos_P / neg_N the values of the positive / negative pairs, pos_BR / neg_BR dense 0/1 pair masks.
"""

from __future__ import annotations

import torch

from dmlscale.indices import convert_to_pairs, pair_masks
from dmlscale.kernels.tiles import TilingSwitch
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.losses.reducers import BaseReducer
from dmlscale.losses.streamed_totals import supports_totals


class GenericPairLoss(BaseMetricLossFunction):
    """Resolve (a1, p, a2, n) pairs, compute the distance matrix once, hand either the pair values
    (`pair_loss`) or dense 0/1 masks (`mask_loss`) to the subclass."""

    uses_masks = False

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        self.require_labels(labels, indices_tuple)
        pairs = convert_to_pairs(indices_tuple, labels, ref_labels, query_ref_index)
        if all(len(x) <= 1 for x in pairs):
            return self.zero_losses()
        mat_BR = self.distance(embeddings, ref_emb)
        if self.uses_masks:
            pos_BR, neg_BR = pair_masks(pairs, mat_BR.shape[0], mat_BR.shape[1], mat_BR.dtype, mat_BR.device)
            return self.mask_loss(mat_BR, pos_BR, neg_BR)
        a1, p, a2, n = pairs
        return self.pair_loss(mat_BR[a1, p], mat_BR[a2, n], pairs, mat_BR)

    def pair_loss(self, pos_P: torch.Tensor, neg_N: torch.Tensor, pairs: tuple,
                  mat_BR: torch.Tensor | None) -> dict:
        raise NotImplementedError

    def mask_loss(self, mat_BR: torch.Tensor, pos_BR: torch.Tensor, neg_BR: torch.Tensor) -> dict:
        raise NotImplementedError


def streams_from_labels(loss: TilingSwitch, embeddings: torch.Tensor, labels: torch.Tensor | None,
                        indices_tuple: tuple | None, ref_emb: torch.Tensor,
                        totals_reducer: BaseReducer | None = None) -> bool:
    """Whether `loss` takes its streamed path: no indices_tuple, a large batch, and (for a streamed
    (sum, count) entry) a `totals_reducer` that reduces it; with tiled=True another reducer is a ValueError."""
    if indices_tuple is not None or labels is None or not loss.uses_tiles(max(len(embeddings), len(ref_emb))):
        return False
    if totals_reducer is not None and not supports_totals(totals_reducer):
        if loss.tiled:
            raise ValueError(f"{type(loss).__name__}(tiled=True) cannot stream with reducer "
                             f"{type(totals_reducer).__name__}; use a Mean, Sum or Threshold reducer, or tiled=None/False")
        return False
    return True
