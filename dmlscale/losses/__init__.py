"""Metric losses (pure math: no torch.distributed here). Drop-in compatible with pytorch-metric-learning."""

from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.losses.batch_hard import BatchHardTripletLoss
from dmlscale.losses.bin_deviance import BinomialDevianceLoss
from dmlscale.losses.catalogue_triplet import BatchAllTripletLoss, SoftMarginTripletLoss
from dmlscale.losses.clip import ClipLoss
from dmlscale.losses.distance_weighted_margin import DistanceWeightedMarginLoss
from dmlscale.losses.gaussian_sampling import GaussianWeightedNegativeLoss
from dmlscale.losses.hard_pair import HardPairLoss
from dmlscale.losses.infonce import NTXentLoss, SupConLoss
from dmlscale.losses.multisim import CircleLoss, MultiSimilarityLoss
from dmlscale.losses.pair import ContrastiveLoss, GenericPairLoss
from dmlscale.losses.proxy import CenterLoss, NCALoss
from dmlscale.losses.reducers import (
    AvgNonZeroReducer,
    BaseReducer,
    DoNothingReducer,
    MeanReducer,
    MultipleReducers,
    SumReducer,
    ThresholdReducer,
)
from dmlscale.losses.siglip import SigLipLoss
from dmlscale.losses.triplet import TripletMarginLoss

__all__ = [
    "AvgNonZeroReducer",
    "BaseMetricLossFunction",
    "BaseReducer",
    "BatchAllTripletLoss",
    "BatchHardTripletLoss",
    "BinomialDevianceLoss",
    "CenterLoss",
    "CircleLoss",
    "ClipLoss",
    "ContrastiveLoss",
    "DistanceWeightedMarginLoss",
    "DoNothingReducer",
    "GaussianWeightedNegativeLoss",
    "GenericPairLoss",
    "HardPairLoss",
    "MeanReducer",
    "MultiSimilarityLoss",
    "MultipleReducers",
    "NCALoss",
    "NTXentLoss",
    "SigLipLoss",
    "SoftMarginTripletLoss",
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
