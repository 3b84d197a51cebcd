"""Uniform-histogram mining: sample pairs evenly across the range of their distances.

Legend: P pairs of one kind (positive or negative), value_P their distances (or similarities),
bin_P the histogram bin of each; edges_E the num_bins + 1 equally spaced edges from min to max;
count_K the number of pairs in each of the K = num_bins bins.

Bin i holds edges[i] <= value < edges[i + 1] (the last bin also holds the maximum). From every
non-empty bin, in bin order, `pos_per_bin` (or `neg_per_bin`) pairs are drawn uniformly with
replacement by `torch.multinomial`, one call per bin on torch's global generator, exactly as PML
draws: under the same seed both pick the same pairs in the same order.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.indices import all_pairs, implicit_self_index
from dmlscale.miners.base import BaseMiner
from dmlscale.param_checks import check_positive_int


class UniformHistogramMiner(BaseMiner):
    """Pairs (a1, p, a2, n): per kind, `*_per_bin` samples from each non-empty bin of a `num_bins` histogram."""

    def __init__(self, num_bins: int = 100, pos_per_bin: int = 10, neg_per_bin: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.num_bins = check_positive_int(owner, "num_bins", num_bins)
        self.pos_per_bin = check_positive_int(owner, "pos_per_bin", pos_per_bin)
        self.neg_per_bin = check_positive_int(owner, "neg_per_bin", neg_per_bin)
        self.add_to_recordable_attributes(list_of_names=["pos_per_bin", "neg_per_bin"], is_stat=False)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor, ref_labels: torch.Tensor,
             query_ref_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        query_ref_index = implicit_self_index(labels, ref_labels, query_ref_index)
        mat_BR = self.distance(embeddings, ref_emb)
        a1, p, a2, n = all_pairs(labels, ref_labels, query_ref_index)
        if len(a1) > 0:
            keep = self.sample_evenly(mat_BR[a1, p], self.pos_per_bin)
            a1, p = a1[keep], p[keep]
        if len(a2) > 0:
            keep = self.sample_evenly(mat_BR[a2, n], self.neg_per_bin)
            a2, n = a2[keep], n[keep]
        return a1, p, a2, n

    def bin_edges(self, value_P: torch.Tensor) -> torch.Tensor:
        """num_bins + 1 equally spaced edges from the smallest to the largest value."""
        return torch.linspace(value_P.min(), value_P.max(), steps=self.num_bins + 1, device=value_P.device,
                              dtype=value_P.dtype)

    def sample_evenly(self, value_P: torch.Tensor, per_bin: int) -> torch.Tensor:
        """Positions into value_P: `per_bin` draws (with replacement) from each non-empty bin, bin by bin.

        Members of a bin are listed in ascending position (a stable sort by bin), as the draws index them.
        """
        edges_E = self.bin_edges(value_P)
        # edges[i] <= value < edges[i + 1] gives i; the maximum (i = num_bins) joins the last bin
        bin_P = (torch.bucketize(value_P, edges_E, right=True) - 1).clamp(max=self.num_bins - 1)
        bin_P = bin_P.masked_fill(torch.isnan(value_P), -1)  # NaN is in no bin
        order_P = torch.argsort(bin_P, stable=True)
        count_K = torch.bincount(bin_P[bin_P >= 0], minlength=self.num_bins)
        start = int((bin_P < 0).sum())
        draws = []
        for count in count_K.tolist():
            if count == 0:
                continue
            members = order_P[start:start + count]
            start += count
            uniform = torch.ones(count, dtype=torch.float, device=members.device)
            draws.append(members[torch.multinomial(uniform, per_bin, replacement=True)])
        if not draws:  # only when every value is NaN
            return torch.empty(0, dtype=torch.long, device=value_P.device)
        return torch.cat(draws)
