"""Metric losses (pure math: no torch.distributed here). Drop-in compatible with pytorch-metric-learning."""

from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.losses.base_loss_wrapper import BaseLossWrapper
from dmlscale.losses.batch_all_triplet_loss import BatchAllTripletLoss
from dmlscale.losses.batch_hard_triplet_loss import BatchHardTripletLoss
from dmlscale.losses.binomial_deviance_loss import BinomialDevianceLoss
from dmlscale.losses.center_loss import CenterLoss
from dmlscale.losses.circle_loss import CircleLoss
from dmlscale.losses.clip_loss import ClipLoss
from dmlscale.losses.contrastive_loss import ContrastiveLoss
from dmlscale.losses.distance_weighted_margin_loss import DistanceWeightedMarginLoss
from dmlscale.losses.gaussian_weighted_negative_loss import GaussianWeightedNegativeLoss
from dmlscale.losses.generic_pair_loss import GenericPairLoss
from dmlscale.losses.hard_pair_loss import HardPairLoss
from dmlscale.losses.multi_similarity_loss import MultiSimilarityLoss
from dmlscale.losses.multiple_losses import MultipleLosses
from dmlscale.losses.nca_loss import NCALoss
from dmlscale.losses.ntxent_loss import NTXentLoss
from dmlscale.losses.proxy_anchor_loss import ProxyAnchorLoss
from dmlscale.losses.proxy_nca_loss import ProxyNCALoss
from dmlscale.losses.reducers import (
    AvgNonZeroReducer,
    BaseReducer,
    ClassWeightedReducer,
    DivisorReducer,
    DoNothingReducer,
    MeanReducer,
    MultipleReducers,
    PerAnchorReducer,
    SumReducer,
    ThresholdReducer,
)
from dmlscale.losses.self_supervised_loss import SelfSupervisedLoss
from dmlscale.losses.siglip_loss import SigLipLoss
from dmlscale.losses.soft_margin_triplet_loss import SoftMarginTripletLoss
from dmlscale.losses.soft_triple_loss import SoftTripleLoss
from dmlscale.losses.supcon_loss import SupConLoss
from dmlscale.losses.triplet_margin_loss import TripletMarginLoss

__all__ = [
    "AvgNonZeroReducer",
    "BaseLossWrapper",
    "BaseMetricLossFunction",
    "BaseReducer",
    "BatchAllTripletLoss",
    "BatchHardTripletLoss",
    "BinomialDevianceLoss",
    "CenterLoss",
    "CircleLoss",
    "ClassWeightedReducer",
    "ClipLoss",
    "ContrastiveLoss",
    "DistanceWeightedMarginLoss",
    "DivisorReducer",
    "DoNothingReducer",
    "GaussianWeightedNegativeLoss",
    "GenericPairLoss",
    "HardPairLoss",
    "MeanReducer",
    "MultiSimilarityLoss",
    "MultipleLosses",
    "MultipleReducers",
    "NCALoss",
    "NTXentLoss",
    "PerAnchorReducer",
    "ProxyAnchorLoss",
    "ProxyNCALoss",
    "SelfSupervisedLoss",
    "SigLipLoss",
    "SoftMarginTripletLoss",
    "SoftTripleLoss",
    "SumReducer",
    "SupConLoss",
    "ThresholdReducer",
    "TripletMarginLoss",
]


def __getattr__(name: str):
    """`dmlscale.losses.CrossBatchMemory`, as in PML; it lives in dmlscale.memory (queue state), loaded lazily
    because dmlscale.memory itself builds on this package."""
    if name == "CrossBatchMemory":
        from dmlscale.memory import CrossBatchMemory

        return CrossBatchMemory
    raise AttributeError(f"module 'dmlscale.losses' has no attribute {name!r}")
