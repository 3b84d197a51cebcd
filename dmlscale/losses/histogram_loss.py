"""Histogram loss: the probability that a negative pair is more similar than a positive pair, from
soft histograms of the two kinds of pair similarities.

Legend: A distinct positive pairs, N distinct negative pairs, K + 1 histogram nodes over [-1, 1];
ap_A / an_N their similarities, density_K1 a soft histogram.

It is one number for the whole batch (not a sum over query rows): DistributedLoss runs it on one
process only (`uses_batch_statistics`), and like PML it takes no separate ref_emb.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.indices import convert_to_triplets
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.param_checks import check_positive, check_positive_int


def distinct_pairs(first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each unordered pair once, as (smaller index, larger index), in ascending order."""
    pairs_2X = torch.unique(torch.sort(torch.stack([first, second]), dim=0).values, dim=1)
    return pairs_2X[0], pairs_2X[1]


class HistogramLoss(BaseMetricLossFunction):
    """Histogram loss (Ustinova and Lempitsky 2016). With p+ and p- the soft histograms (linear
    interpolation onto nodes -1, -1 + delta, ..., 1) of the similarities of the distinct positive and
    negative pairs in all triplets (or those of indices_tuple):

        L = sum_r p-_r * Phi+_r,   Phi+ the cumulative sum of p+

    delta = 2 / n_bins (n_bins = 100 when neither is given). Similarities must lie in [-1, 1]
    (default CosineSimilarity); others raise a ValueError. Already reduced, as in PML.
    """

    uses_batch_statistics = True

    def __init__(self, n_bins: int | None = None, delta: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        owner = type(self).__name__
        if n_bins is not None:
            check_positive_int(owner, "n_bins", n_bins)
        if delta is not None:
            check_positive(owner, "delta", delta)
        if delta is not None and n_bins is not None and delta != 2 / n_bins:
            raise ValueError(f"{owner}: delta and n_bins must satisfy delta = 2 / n_bins, got delta={delta!r}, "
                             f"n_bins={n_bins!r}")
        self.delta = delta if delta is not None else 2 / (100 if n_bins is None else n_bins)
        self.num_nodes = round(1 + 2 / self.delta)
        self.add_to_recordable_attributes(name="delta", is_stat=False)

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        self.require_labels(labels, indices_tuple)
        batch_against_itself = len(ref_emb) == len(embeddings) and torch.equal(
            query_ref_index, torch.arange(len(embeddings), device=query_ref_index.device))
        if not batch_against_itself:
            raise ValueError(f"{type(self).__name__} scores the pairs of one batch: a separate ref_emb is not "
                             "supported (PML refuses it too)")
        a_T, p_T, n_T = convert_to_triplets(indices_tuple, labels, ref_labels, "all", query_ref_index=query_ref_index)
        if len(a_T) == 0:
            return self.zero_losses()
        mat_BR = self.distance(embeddings, ref_emb)
        ap_A = mat_BR[distinct_pairs(a_T, p_T)]
        an_N = mat_BR[distinct_pairs(a_T, n_T)]
        all_X = torch.cat([ap_A, an_N]).detach()
        low, high = float(all_X.min()), float(all_X.max())
        if low < -1 - 1e-6 or high > 1 + 1e-6:
            raise ValueError(f"{type(self).__name__} needs similarities in [-1, 1]; distance "
                             f"{type(self.distance).__name__} gave values in [{low:.4g}, {high:.4g}]")
        cdf_pos_K1 = torch.cumsum(self.density(ap_A), dim=0)
        loss = torch.sum(self.density(an_N) * cdf_pos_K1)
        return {"loss": {"losses": loss, "indices": None, "reduction_type": "already_reduced"}}

    def density(self, values_X: torch.Tensor) -> torch.Tensor:
        """Each value split between its two neighbouring nodes by linear interpolation, averaged."""
        node_X = torch.floor((values_X.detach() + 1) / self.delta).long().clamp(0, self.num_nodes - 2)
        to_upper_X = (values_X + 1 - node_X * self.delta) / self.delta
        to_lower_X = ((node_X + 1) * self.delta - 1 - values_X) / self.delta
        density_K1 = torch.zeros(self.num_nodes, dtype=values_X.dtype, device=values_X.device)
        density_K1.scatter_add_(0, node_X + 1, to_upper_X)
        density_K1.scatter_add_(0, node_X, to_lower_X)
        return density_K1 / len(values_X)
