"""Distance-weighted sampling (Wu et al. 2017, "Sampling Matters in Deep Embedding Learning").

Legend: B query rows, R reference rows, D embedding size; dist_BR Euclidean distances of unit vectors.

On the unit sphere in D dimensions pairwise distances follow q(d) ~ d^(D-2) (1 - d^2/4)^((D-3)/2).
Sampling negatives with weight 1/q(d) spreads them evenly over distances instead of concentrating
them near sqrt(2):
    log w_ij = (2 - D) log d_ij - (D - 3)/2 log(1 - d_ij^2 / 4),  d_ij clamped to >= cutoff,
and w_ij = 0 for same-label pairs and for d_ij >= nonzero_loss_cutoff (they would give zero loss).
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.distances import LpDistance
from dmlscale.indices import implicit_self_index, random_triplets
from dmlscale.miners.base import BaseMiner
from dmlscale.param_checks import check_real


class DistanceWeightedMiner(BaseMiner):
    """Triplets (a, p, n): random positives, negatives drawn with weight 1/q(d).

    Draws from torch's global generator in PML's order, so a seeded run yields PML's triplets.
    Requires LpDistance(p=2, power=1, normalize_embeddings=True).
    """

    def __init__(self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.require_distance(LpDistance, p=2, power=1, normalize_embeddings=True)
        check_real(type(self).__name__, "cutoff", cutoff, finite=False)
        check_real(type(self).__name__, "nonzero_loss_cutoff", nonzero_loss_cutoff, finite=False)
        if nonzero_loss_cutoff <= cutoff:
            raise ValueError(
                f"nonzero_loss_cutoff ({nonzero_loss_cutoff!r}) must exceed cutoff ({cutoff!r}), "
                "otherwise every negative has weight 0"
            )
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor, ref_labels: torch.Tensor,
             query_ref_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        query_ref_index = implicit_self_index(labels, ref_labels, query_ref_index)
        weights_BR = self.negative_weights(embeddings, labels, ref_emb, ref_labels)
        return random_triplets(labels, ref_labels, weights_BR=weights_BR, query_ref_index=query_ref_index)

    def negative_weights(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor,
                         ref_labels: torch.Tensor) -> torch.Tensor:
        """Row-normalised sampling weights w_BR (rows without an admissible negative are NaN: never sampled)."""
        dim = float(embeddings.shape[1])
        dist_BR = self.distance(embeddings, ref_emb).clamp(min=self.cutoff)
        log_w_BR = (2.0 - dim) * torch.log(dist_BR) - ((dim - 3) / 2) * torch.log(1.0 - 0.25 * dist_BR**2.0)
        bad_BR = ~torch.isfinite(log_w_BR)
        same_BR = labels[:, None] == ref_labels[None, :]
        # same-label entries count as log w = 0 in the stabilising max (PML's convention, kept so the
        # draws match bit for bit)
        log_w_BR = log_w_BR.masked_fill(same_BR, 0.0)
        finite = log_w_BR[~bad_BR]
        if finite.numel() == 0:
            return torch.zeros_like(dist_BR)
        w_BR = torch.exp(log_w_BR - finite.max())
        w_BR = w_BR.masked_fill(same_BR | bad_BR | (dist_BR >= self.nonzero_loss_cutoff), 0.0)
        return w_BR / w_BR.sum(dim=1, keepdim=True)
