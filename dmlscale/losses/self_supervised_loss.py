"""SelfSupervisedLoss: a pair-based loss on two views of the same inputs, each row's own other view its
only positive, so no labels are needed.

Legend: B inputs, D embedding size; emb_BD one view, ref_BD the other (row i of each is input i), labels_B
arange(B), the input each row comes from.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.inputs import check_embeddings
from dmlscale.losses.base_loss_wrapper import BaseLossWrapper


class SelfSupervisedLoss(BaseLossWrapper):
    """Wraps a pair-based loss for augmentation pairs (PML's): `loss_fn(embeddings, ref_emb)` with row i of
    both the same input under two augmentations. Label of row i: i.

        symmetric=True:  loss(cat[emb, ref], cat[arange(B), arange(B)])    (both views are queries; the
                         batch is compared with itself, so each row's positive is its other view)
        symmetric=False: loss(emb, arange(B), ref_emb=ref, ref_labels=arange(B))   (emb rows are the queries)

    The wrapped loss keeps its own distance, reducer and settings. As PML, only the pair-based losses it
    names (`supported_losses()`) are accepted; the others raise a ValueError at construction.
    """

    def __init__(self, loss: torch.nn.Module, symmetric: bool = True, **kwargs: Any) -> None:
        super().__init__(loss=loss, **kwargs)
        if not isinstance(symmetric, bool):
            raise ValueError(f"SelfSupervisedLoss: symmetric must be True or False, got {symmetric!r}")
        self.loss = loss
        self.symmetric = symmetric

    @staticmethod
    def supported_losses() -> list[str]:
        """PML 2.9's list (the names dmlscale lacks are kept, so the list stays PML's)."""
        return ["AngularLoss", "CircleLoss", "ContrastiveLoss", "GeneralizedLiftedStructureLoss",
                "IntraPairVarianceLoss", "LiftedStructureLoss", "MultiSimilarityLoss", "NTXentLoss",
                "SignalToNoiseRatioContrastiveLoss", "SupConLoss", "TripletMarginLoss", "NCALoss",
                "TupletMarginLoss"]

    def forward(self, embeddings: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor | dict:
        """embeddings: one view of the inputs (B x D); ref_emb: another view of the same inputs, row by row."""
        check_embeddings("embeddings", embeddings)
        check_embeddings("ref_emb", ref_emb)
        if ref_emb.shape != embeddings.shape:
            raise ValueError(f"SelfSupervisedLoss: ref_emb must be the other view of the same rows, shape "
                             f"{tuple(embeddings.shape)}; got {tuple(ref_emb.shape)}")
        labels_B = torch.arange(embeddings.shape[0], device=embeddings.device)
        if self.symmetric:
            return self.loss(torch.cat([embeddings, ref_emb], dim=0), torch.cat([labels_B, labels_B], dim=0))
        return self.loss(embeddings=embeddings, labels=labels_B, ref_emb=ref_emb, ref_labels=labels_B.clone())
