"""ProxyNCA loss: NCA where the references are one learned proxy per class.

Legend: B queries, C classes, D embedding size; proxies (C x D) the learned proxies, closeness_BC the
negated distance (or the similarity) to each proxy, same_BC 1 where the proxy is the sample's class.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.indices import anchor_weights
from dmlscale.losses.nca_loss import NCALoss
from dmlscale.losses.proxy_parameters import (
    ProxyRegularization,
    WeightInit,
    check_proxy_batch,
    like_embeddings,
    make_proxies,
    standard_normal,
)
from dmlscale.param_checks import check_positive_int


class ProxyNCALoss(ProxyRegularization, NCALoss):
    """ProxyNCA (Movshovitz-Attias et al. 2017), as PML: NCALoss against the C proxies instead of the batch,

        L_i = -log softmax_{y_i}(softmax_scale * l_i.),   l_ic = -d(x_i, p_c) or s(x_i, p_c)

    times a miner weight per sample (its count among the anchors of indices_tuple over the largest such
    count); default distance squared Euclidean of normalised vectors, MeanReducer. A sample whose softmax
    mass on its proxy underflows to 0 is dropped (as PML). `proxies` is a C x D nn.Parameter (N(0, 1), PML's
    init): give it to the optimiser with the model. Terms are per sample, so under DistributedLoss each rank
    computes its own rows and the reducer runs globally. With a `weight_regularizer`,
    `weight_reg_weight * weight_regularizer(proxies)` is the sub-loss "weight_reg_loss" (PML's).
    """

    compares_to_reference = False

    def __init__(self, num_classes: int, embedding_size: int, weight_init_func: WeightInit | None = None,
                 weight_regularizer: torch.nn.Module | None = None, weight_reg_weight: float = 1,
                 **kwargs: Any) -> None:
        owner = type(self).__name__
        check_positive_int(owner, "num_classes", num_classes)
        check_positive_int(owner, "embedding_size", embedding_size)
        self.init_regularizer(owner, weight_regularizer, weight_reg_weight)
        super().__init__(**kwargs)
        self.set_regularizer(weight_regularizer, weight_reg_weight)
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.proxies = make_proxies(owner, (num_classes, embedding_size), weight_init_func, standard_normal)
        self.register_buffer("proxy_labels", torch.arange(num_classes), persistent=False)
        self.add_to_recordable_attributes(list_of_names=["num_classes"], is_stat=False)

    def _sub_loss_names(self) -> list[str]:
        return ["loss"]

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The B x C matrix of distances (or similarities) to the proxies."""
        return self.distance(embeddings, like_embeddings(self.proxies, embeddings))

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        check_proxy_batch(type(self).__name__, embeddings, labels, ref_emb, num_classes=self.num_classes,
                          embedding_size=self.embedding_size)
        dtype, device = embeddings.dtype, embeddings.device
        # the proxies are the reference set, so (as PML) only the anchors of a tuple weigh the samples
        weights_B = anchor_weights(indices_tuple, len(embeddings), dtype, device, using_ref=True)
        mat_BC = self.get_logits(embeddings)
        closeness_BC = mat_BC if self.distance.is_inverted else -mat_BC
        same_BC = (labels[:, None] == self.proxy_labels.to(device)[None, :]).to(dtype)
        loss_dict = self.nca_terms(closeness_BC, same_BC, weights_B)
        return self.add_weight_regularization(loss_dict, like_embeddings(self.proxies, embeddings))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_size={self.embedding_size}"
