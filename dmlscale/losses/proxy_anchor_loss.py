"""Proxy-Anchor loss: each learned class proxy pulls its class's samples and pushes the others, pooled by a
soft maximum over the whole batch.

Legend: B queries, C classes, D embedding size; proxies (C x D) the learned proxies, sim_BC the distance
(or similarity) of each sample to each proxy, *_C one value per proxy, w_B1 the miner weight term.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.indices import anchor_weights
from dmlscale.kernels.logsumexp import masked_logsumexp
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.losses.proxy_parameters import (
    ProxyRegularization,
    WeightInit,
    check_proxy_batch,
    kaiming_normal_fan_out,
    like_embeddings,
    make_proxies,
)
from dmlscale.losses.reducers import BaseReducer, DivisorReducer
from dmlscale.param_checks import check_positive_int, check_real


class ProxyAnchorLoss(ProxyRegularization, BaseMetricLossFunction):
    """Proxy-Anchor loss (Kim et al. 2020), as PML: with s(x, p) the similarity (cosine by default), for
    each proxy p_c (P+ the classes present in the batch, X_c^+ / X_c^- the batch samples of / not of class c)

        pos_loss_c = log(1 + sum_{x in X_c^+} exp(-alpha (s(x, p_c) - margin) + w_x))   summed, / |P+|
        neg_loss_c = log(1 + sum_{x in X_c^-} exp( alpha (s(x, p_c) + margin) + w_x))   summed, / C

    (for a distance d the signs flip: alpha (d - margin), alpha (-margin - d)). w_x = miner weight - 1,
    the miner weight being x's count in indices_tuple over the largest count (1 without one), so w_x = 0
    when there is no miner, and a sample absent from the tuple still counts, damped by e^-1 (as PML). A proxy with no sample on one side gives 0 there. The default reducer is
    DivisorReducer (the divisors above); sub-losses "pos_loss" and "neg_loss". `proxies` is a C x D
    nn.Parameter (Kaiming normal, fan_out): give it to the optimiser with the model. With a `weight_regularizer`,
    `weight_reg_weight * weight_regularizer(proxies)` is the sub-loss "weight_reg_loss" (PML's).
    """

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 0.1, alpha: float = 32,
                 weight_init_func: WeightInit | None = None, weight_regularizer: torch.nn.Module | None = None,
                 weight_reg_weight: float = 1, **kwargs: Any) -> None:
        owner = type(self).__name__
        check_positive_int(owner, "num_classes", num_classes)
        check_positive_int(owner, "embedding_size", embedding_size)
        check_real(owner, "margin", margin)
        check_real(owner, "alpha", alpha)
        self.init_regularizer(owner, weight_regularizer, weight_reg_weight)
        super().__init__(**kwargs)
        self.set_regularizer(weight_regularizer, weight_reg_weight)
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.margin = margin
        self.alpha = alpha
        self.proxies = make_proxies(owner, (num_classes, embedding_size), weight_init_func, kaiming_normal_fan_out)
        self.add_to_recordable_attributes(list_of_names=["num_classes", "alpha", "margin"], is_stat=False)

    def get_default_reducer(self) -> BaseReducer:
        return DivisorReducer()

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def _sub_loss_names(self) -> list[str]:
        return ["pos_loss", "neg_loss"]

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The B x C matrix of distances (or similarities) to the proxies."""
        return self.distance(embeddings, like_embeddings(self.proxies, embeddings))

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        check_proxy_batch(type(self).__name__, embeddings, labels, ref_emb, num_classes=self.num_classes,
                          embedding_size=self.embedding_size, why=" (each proxy's terms pool the whole batch, so it "
                                                                  "cannot take a gathered reference batch either)")
        dtype, device = embeddings.dtype, embeddings.device
        w_B1 = anchor_weights(indices_tuple, len(embeddings), dtype, device)[:, None] - 1
        sim_BC = self.get_logits(embeddings)
        pos_BC = F.one_hot(labels, self.num_classes).bool()
        num_with_pos = int(pos_BC.any(dim=0).sum())
        pull_BC = self.distance.margin(sim_BC, self.margin)   # margin - s (similarity) or d - margin
        push_BC = self.distance.margin(-self.margin, sim_BC)  # s + margin (similarity) or -margin - d
        pos_C = masked_logsumexp(self.alpha * pull_BC + w_B1, pos_BC, add_one=True, dim=0)
        neg_C = masked_logsumexp(self.alpha * push_BC + w_B1, ~pos_BC, add_one=True, dim=0)
        indices_C = torch.arange(self.num_classes, device=device)
        loss_dict = {
            "pos_loss": {"losses": pos_C, "indices": indices_C, "reduction_type": "element",
                         "divisor": num_with_pos},
            "neg_loss": {"losses": neg_C, "indices": indices_C, "reduction_type": "element",
                         "divisor": self.num_classes},
        }
        return self.add_weight_regularization(loss_dict, like_embeddings(self.proxies, embeddings))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_size={self.embedding_size}"
