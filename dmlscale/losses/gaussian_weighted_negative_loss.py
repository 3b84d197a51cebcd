"""Gaussian-weighted negative sampling (Deep_metric "DistanceMatch"), then a contrastive loss.

Legend: B queries, R references; mat_BR the distance matrix, neg_BR the candidate negatives,
mean_B / std_B the Gaussian fitted to each anchor's negative distances, z_BR the standard scores,
weight_BR the sampling weights, sampled_BR the negatives drawn.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.indices import convert_to_pairs
from dmlscale.losses.contrastive_loss import ContrastiveLoss
from dmlscale.param_checks import check_positive_int, check_real

FAVOUR_CHOICES = ("mean", "tails")


class GaussianWeightedNegativeLoss(ContrastiveLoss):
    """Contrastive loss on all positive pairs and on negatives drawn per anchor by a Gaussian weight.

    For each anchor a, fit a Gaussian to its candidate negatives' distances d_an (mean mu_a and
    population std sigma_a over the negatives of labels/ref_labels, or of `indices_tuple`), set
    z_an = (d_an - mu_a) / sigma_a and draw `negatives_per_anchor` distinct negatives with
    probability proportional to

        favour="mean"  (default): w_an = exp(-z_an^2 / 2)   the Gaussian density: typical negatives
        favour="tails":           w_an = exp(+z_an^2 / 2)   the catalogue's DistanceMatch weight

    (an anchor with no more candidates than that keeps them all; with sigma_a = 0 the draw is uniform).
    Then L = [d_ap - pos_margin]_+ averaged over the active positive pairs plus [neg_margin - d_an]_+
    averaged over the active sampled negative pairs (ContrastiveLoss, AvgNonZeroReducer per part).

    Why "mean" by default: the tails mix the hardest negatives (noisy, prone to collapse early in
    training) with the easiest ones (beyond the margin, zero gradient), and exp(+z^2/2) lets one outlier
    take all the mass. The density instead draws moderate negatives, bounded weights, in the spirit of
    distance-weighted sampling; "tails" reproduces the catalogue. Weights are computed from detached
    distances (sampling sends no gradient) and normalised per row in log space, so they never overflow.

    Randomness: pass `seed` (a private torch.Generator, created on the distances' device at the first
    call, so two losses built with the same seed draw the same sequence) or your own `generator`;
    with neither, torch's global generator is used. Defaults: negatives_per_anchor=5, pos_margin=0,
    neg_margin=1.2 (a little below sqrt(2), where unrelated unit vectors sit in high dimension, for the
    default L2-normalised Euclidean distance).
    """

    def __init__(self, negatives_per_anchor: int = 5, favour: str = "mean", pos_margin: float = 0.0,
                 neg_margin: float = 1.2, *, seed: int | None = None, generator: torch.Generator | None = None,
                 **kwargs: Any) -> None:
        name = type(self).__name__
        pos_margin = check_real(name, "pos_margin", pos_margin)
        neg_margin = check_real(name, "neg_margin", neg_margin)
        super().__init__(pos_margin=pos_margin, neg_margin=neg_margin, **kwargs)
        self.negatives_per_anchor = check_positive_int(name, "negatives_per_anchor", negatives_per_anchor)
        if favour not in FAVOUR_CHOICES:
            raise ValueError(f"{name}: favour must be one of {FAVOUR_CHOICES}, got {favour!r}")
        self.favour = favour
        if seed is not None and generator is not None:
            raise ValueError(f"{name}: pass seed or generator, not both (got seed={seed!r} and a generator)")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"{name}: seed must be an int, got {seed!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"{name}: generator must be a torch.Generator, got {type(generator).__name__}")
        self.seed = seed
        self.generator = generator

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        self.require_labels(labels, indices_tuple)
        a1, p, a2, n = convert_to_pairs(indices_tuple, labels, ref_labels, query_ref_index)
        if len(a1) == 0 and len(a2) == 0:
            return self.zero_losses()
        mat_BR = self.distance(embeddings, ref_emb)
        neg_BR = torch.zeros(mat_BR.shape, dtype=torch.bool, device=mat_BR.device)
        neg_BR[a2, n] = True
        sampled_BR = self.sample_negatives(mat_BR.detach(), neg_BR)
        a2, n = torch.where(sampled_BR)
        return self.pair_loss(mat_BR[a1, p], mat_BR[a2, n], (a1, p, a2, n), mat_BR)

    def negative_weights(self, mat_BR: torch.Tensor, neg_BR: torch.Tensor) -> torch.Tensor:
        """Unnormalised sampling weights (B x R), > 0 exactly on the candidate negatives, max 1 per row."""
        work_dtype = torch.float64 if mat_BR.dtype == torch.float64 else torch.float32
        x_BR = mat_BR.detach().to(work_dtype)
        zero = torch.zeros((), dtype=work_dtype, device=x_BR.device)
        count_B = neg_BR.sum(dim=1).clamp(min=1).to(work_dtype)
        mean_B = torch.where(neg_BR, x_BR, zero).sum(dim=1) / count_B
        centred_BR = torch.where(neg_BR, x_BR - mean_B[:, None], zero)
        std_B = (centred_BR.square().sum(dim=1) / count_B).sqrt()
        # rounding leaves a tiny std for equal distances: treat it as 0 (uniform draw)
        flat_B = std_B <= 64 * torch.finfo(work_dtype).eps * (1 + mean_B.abs())
        z_BR = centred_BR / torch.where(flat_B, 1, std_B)[:, None]
        half_sq_BR = torch.where(flat_B[:, None], zero, z_BR.square() / 2)
        log_w_BR = -half_sq_BR if self.favour == "mean" else half_sq_BR
        log_w_BR = log_w_BR.masked_fill(~neg_BR, -torch.inf)
        row_max_B = log_w_BR.max(dim=1).values.masked_fill(~neg_BR.any(dim=1), 0)
        weight_BR = (log_w_BR - row_max_B[:, None]).exp()
        # keep every candidate drawable: no weight may underflow to exactly 0
        return torch.where(neg_BR, weight_BR.clamp(min=torch.finfo(work_dtype).tiny), zero)

    def sample_negatives(self, mat_BR: torch.Tensor, neg_BR: torch.Tensor) -> torch.Tensor:
        """Boolean B x R mask of the negatives drawn (a subset of neg_BR), one multinomial call for all rows."""
        k = self.negatives_per_anchor
        sample_B = neg_BR.sum(dim=1) > k
        sampled_BR = neg_BR & ~sample_B[:, None]  # few candidates: keep them all
        if bool(sample_B.any()):
            weight_SR = self.negative_weights(mat_BR, neg_BR)[sample_B]
            picks_Sk = torch.multinomial(weight_SR, k, replacement=False, generator=self._get_generator(mat_BR.device))
            rows_S = torch.where(sample_B)[0]
            sampled_BR[rows_S[:, None], picks_Sk] = True
        return sampled_BR

    def _get_generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return self.generator
        if self.generator is None or self.generator.device != torch.device(device):
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        return self.generator

    def extra_repr(self) -> str:
        return (f"negatives_per_anchor={self.negatives_per_anchor}, favour={self.favour!r}, "
                f"pos_margin={self.pos_margin}, neg_margin={self.neg_margin}, seed={self.seed}")
