"""SoftTriple loss: a softmax over classes, each class a soft maximum over its K learned centres.

Legend: B queries, C classes, K centres per class, D embedding size; fc (D x C*K) the centres as columns,
sim_BCK the similarity of each sample to each centre, sim_BC the class similarity, *_B one value per sample.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.indices import anchor_weights
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.losses.proxy_parameters import (
    ProxyRegularization,
    WeightInit,
    check_proxy_batch,
    kaiming_uniform_sqrt5,
    like_embeddings,
    make_proxies,
)
from dmlscale.param_checks import check_positive, check_positive_int, check_real


class SoftTripleLoss(ProxyRegularization, BaseMetricLossFunction):
    """SoftTriple loss (Qian et al. 2019), as PML: with s(x, c_ck) the similarity to centre k of class c,

        S_c(x) = sum_k softmax_k(s(x, c_ck) / gamma) s(x, c_ck)
        L_i = -log softmax_{y_i}(la * (S_c(x_i) - margin [c = y_i]))

    times a miner weight per sample (its count in indices_tuple over the largest count); MeanReducer.
    Needs a similarity (CosineSimilarity by default, or DotProductSimilarity). As PML, the attribute
    `gamma` holds 1 / gamma, and the paper's centre-merging regulariser is not part of the loss. `fc` is a
    D x C*K nn.Parameter (columns class-major: class c's centres are columns c*K .. c*K+K-1; Kaiming uniform,
    a = sqrt(5), PML's init): give it to the optimiser with the model. With a `weight_regularizer`,
    `weight_reg_weight * weight_regularizer(fc.t())` (one row per centre) is the sub-loss "weight_reg_loss".
    """

    compares_to_reference = False

    def __init__(self, num_classes: int, embedding_size: int, centers_per_class: int = 10, la: float = 20,
                 gamma: float = 0.1, margin: float = 0.01, weight_init_func: WeightInit | None = None,
                 weight_regularizer: torch.nn.Module | None = None, weight_reg_weight: float = 1,
                 **kwargs: Any) -> None:
        owner = type(self).__name__
        check_positive_int(owner, "num_classes", num_classes)
        check_positive_int(owner, "embedding_size", embedding_size)
        check_positive_int(owner, "centers_per_class", centers_per_class)
        check_real(owner, "la", la)
        check_positive(owner, "gamma", gamma)
        check_real(owner, "margin", margin)
        self.init_regularizer(owner, weight_regularizer, weight_reg_weight)
        super().__init__(**kwargs)
        self.set_regularizer(weight_regularizer, weight_reg_weight)
        if not self.distance.is_inverted:
            raise ValueError(f"{owner} needs a similarity (CosineSimilarity or DotProductSimilarity), got the "
                             f"distance {type(self.distance).__name__}")
        self.la = la
        self.gamma = 1.0 / gamma
        self.margin = margin
        self.num_classes = num_classes
        self.centers_per_class = centers_per_class
        self.embedding_size = embedding_size
        self.fc = make_proxies(owner, (embedding_size, num_classes * centers_per_class), weight_init_func,
                               kaiming_uniform_sqrt5)
        self.add_to_recordable_attributes(
            list_of_names=["la", "gamma", "margin", "centers_per_class", "num_classes", "embedding_size"],
            is_stat=False,
        )

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def _sub_loss_names(self) -> list[str]:
        return ["loss"]

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """S_c(x): the B x C class similarities, each a softmax-weighted mean over the class's centres."""
        sim_BCK = self.distance(embeddings, like_embeddings(self.fc, embeddings).t())
        sim_BCK = sim_BCK.view(-1, self.num_classes, self.centers_per_class)
        return (F.softmax(sim_BCK * self.gamma, dim=2) * sim_BCK).sum(dim=2)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        check_proxy_batch(type(self).__name__, embeddings, labels, ref_emb, num_classes=self.num_classes,
                          embedding_size=self.embedding_size)
        dtype, device = embeddings.dtype, embeddings.device
        weights_B = anchor_weights(indices_tuple, len(embeddings), dtype, device)
        sim_BC = self.get_logits(embeddings)
        own_BC = F.one_hot(labels, self.num_classes).to(dtype)
        losses_B = F.cross_entropy(self.la * (sim_BC - self.margin * own_BC), labels, reduction="none")
        loss_dict = {"loss": {"losses": losses_B * weights_B, "indices": torch.arange(len(embeddings), device=device),
                              "reduction_type": "element"}}
        return self.add_weight_regularization(loss_dict, like_embeddings(self.fc, embeddings).t())

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, "
                f"centers_per_class={self.centers_per_class}")
