"""Manifold loss: similarities diffused over a graph of the batch and K learnable proxies, each sample
ranked against the proxies of other meta-classes.

Legend: B samples, K proxies, V = B + K graph nodes, D embedding size; sim_VV the affinities,
spread_VV the random-walk diffusion (1 - alpha)(I - alpha S_norm)^-1, meta_B each sample's proxy,
*_BK one value per (sample, proxy).

One number for the whole batch (graph inverse): DistributedLoss runs it on one process only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.inputs import resolve_inputs
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.param_checks import check_positive_int, check_real


def hinge_log_sum_exp(score_BK: torch.Tensor, meta_B: torch.Tensor, margin: float) -> torch.Tensor:
    """mean_i log(1 + sum_{k != m_i, x_ik >= 0} exp(x_ik)),  x_ik = score_ik - score_{i m_i} + margin."""
    rows_B = torch.arange(len(meta_B), device=score_BK.device)
    excess_BK = score_BK - score_BK[rows_B, meta_B][:, None] + margin
    keep_BK = excess_BK >= 0
    keep_BK[rows_B, meta_B] = False
    excess_BK = excess_BK.masked_fill(~keep_BK, -math.inf)
    return torch.log(1 + torch.exp(excess_BK).sum(dim=1)).mean()


class ManifoldLoss(BaseMetricLossFunction):
    """Manifold loss (Aziere and Todorovic 2019, "Ensemble Deep Manifold Similarity Learning using
    Hard Proxies"). With V = samples and K proxies, A = exp(max(s, 0) / 0.5) off the diagonal,
    S_norm = D^-1/2 A D^-1/2 and F = (1 - alpha)(I - alpha S_norm)^-1:

        L = L_int + lambdaC * L_ctx,   L_int = hinge_lse(F[samples, proxies]),
        L_ctx = hinge_lse(cos(F[sample row], F[proxy row]))

    where hinge_lse is the mean over samples of log(1 + sum over other proxies k with
    x_ik - x_i,m_i + margin >= 0 of exp of it), m_i the sample's meta-class: indices_tuple when given
    (a tensor of B proxy ids), else every proxy once plus random ones, shuffled (PML's draw). No
    labels, no separate ref_emb. Already reduced.

    Differences from PML: the inverse is taken in the embeddings' dtype (PML casts to float32), and
    lambdaC=inf uses only the context term (PML multiplies it by inf).
    """

    uses_batch_statistics = True
    takes_labels = False

    def __init__(self, l: int, K: int = 50, lambdaC: float = 1.0, alpha: float = 0.8, margin: float = 5e-4,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.l = check_positive_int(owner, "l", l)
        self.K = check_positive_int(owner, "K", K)
        self.lambdaC = check_real(owner, "lambdaC", lambdaC, minimum=0, finite=False)
        self.alpha = check_real(owner, "alpha", alpha, minimum=0, strict=True)
        if self.alpha >= 1:
            raise ValueError(f"{owner}: alpha must be in (0, 1), got {alpha!r}")
        self.margin = check_real(owner, "margin", margin)
        self.proxies = torch.nn.Parameter(torch.randn(self.K, self.l))
        self.add_to_recordable_attributes(list_of_names=["K", "l", "lambdaC", "alpha", "margin"], is_stat=False)

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def loss_dict(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None, indices_tuple: torch.Tensor | None = None,
                  ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None, *,
                  query_ref_index: torch.Tensor | None = None) -> dict:
        """As the base, but indices_tuple is a tensor of meta-class ids (one per row), not a tuple."""
        owner = type(self).__name__
        if labels is not None or ref_labels is not None:
            raise ValueError(f"{owner} takes no labels (meta-classes are drawn, or given as indices_tuple)")
        self.reset_stats()
        embeddings, _, ref_emb, _, query_ref_index = resolve_inputs(embeddings, None, ref_emb, None, query_ref_index)
        if len(ref_emb) != len(embeddings) or not torch.equal(
                query_ref_index, torch.arange(len(embeddings), device=query_ref_index.device)):
            raise ValueError(f"{owner} builds one graph of the batch: a separate ref_emb is not supported "
                             "(PML refuses it too)")
        if embeddings.shape[1] != self.l:
            raise ValueError(f"{owner}(l={self.l}) got embeddings of size {embeddings.shape[1]}")
        num_rows = len(embeddings)
        if indices_tuple is not None:
            meta_B = indices_tuple
            if (not torch.is_tensor(meta_B) or meta_B.shape != (num_rows,) or meta_B.is_floating_point()
                    or (num_rows and (int(meta_B.min()) < 0 or int(meta_B.max()) >= self.K))):
                raise ValueError(f"{owner}: indices_tuple must be a tensor of {num_rows} meta-class ids in "
                                 f"[0, {self.K}), got {meta_B!r}")
        else:
            if num_rows < self.K:
                raise ValueError(f"{owner}: drawing meta-classes needs at least K={self.K} rows, got {num_rows}")
            meta_B = torch.cat((torch.arange(self.K), torch.randint(0, self.K, (num_rows - self.K,))))
            meta_B = meta_B[torch.randperm(num_rows)]
        return self.add_embedding_regularization(self.manifold_loss(embeddings, meta_B.to(embeddings.device)),
                                                 embeddings)

    def manifold_loss(self, embeddings: torch.Tensor, meta_B: torch.Tensor) -> dict:
        num_rows = len(embeddings)
        nodes_VD = torch.cat([embeddings, self.proxies.to(embeddings.dtype)], dim=0)
        eye_VV = torch.eye(len(nodes_VD), dtype=nodes_VD.dtype, device=nodes_VD.device)
        affinity_VV = torch.exp(self.distance(nodes_VD, nodes_VD).clamp(min=0) / 0.5)
        affinity_VV = affinity_VV - affinity_VV * eye_VV
        inv_sqrt_degree_V = affinity_VV.sum(dim=1) ** -0.5
        normed_VV = inv_sqrt_degree_V[:, None] * affinity_VV * inv_sqrt_degree_V[None, :]
        compute_dtype = torch.float32 if nodes_VD.dtype in (torch.float16, torch.bfloat16) else nodes_VD.dtype
        spread_VV = torch.inverse((eye_VV - self.alpha * normed_VV).to(compute_dtype)).to(nodes_VD.dtype)
        spread_VV = (1 - self.alpha) * spread_VV
        loss = torch.zeros((), dtype=embeddings.dtype, device=embeddings.device)
        if self.lambdaC != math.inf:
            loss = loss + hinge_log_sum_exp(spread_VV[:num_rows, num_rows:], meta_B, self.margin)
        context_BK = F.cosine_similarity(spread_VV[:num_rows][None, :, :], spread_VV[num_rows:][:, None, :], dim=-1).T
        context = hinge_log_sum_exp(context_BK, meta_B, self.margin)
        loss = loss + (context if self.lambdaC == math.inf else self.lambdaC * context)
        return {"loss": {"losses": loss, "indices": None, "reduction_type": "already_reduced"}}
