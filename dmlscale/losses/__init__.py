"""Metric losses (pure math: no torch.distributed here). Drop-in compatible with pytorch-metric-learning."""

from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.losses.pair import ContrastiveLoss, GenericPairLoss
from dmlscale.losses.reducers import (
    AvgNonZeroReducer,
    BaseReducer,
    DoNothingReducer,
    MeanReducer,
    MultipleReducers,
    SumReducer,
    ThresholdReducer,
)
from dmlscale.losses.triplet import TripletMarginLoss

__all__ = [
    "AvgNonZeroReducer",
    "BaseMetricLossFunction",
    "BaseReducer",
    "ContrastiveLoss",
    "DoNothingReducer",
    "GenericPairLoss",
    "MeanReducer",
    "MultipleReducers",
    "SumReducer",
    "ThresholdReducer",
    "TripletMarginLoss",
]

from dmlscale.losses.infonce import NTXentLoss, SupConLoss  # noqa: E402
from dmlscale.losses.multisim import CircleLoss, MultiSimilarityLoss  # noqa: E402
from dmlscale.losses.proxy import CenterLoss, NCALoss  # noqa: E402

__all__ += ["CenterLoss", "CircleLoss", "MultiSimilarityLoss", "NCALoss", "NTXentLoss", "SupConLoss"]

from dmlscale.losses.bin_deviance import BinomialDevianceLoss  # noqa: E402
from dmlscale.losses.catalogue_triplet import BatchAllTripletLoss, SoftMarginTripletLoss  # noqa: E402
from dmlscale.losses.gaussian_sampling import GaussianWeightedNegativeLoss  # noqa: E402
from dmlscale.losses.hard_pair import HardPairLoss  # noqa: E402

__all__ += ["BatchAllTripletLoss", "BinomialDevianceLoss", "GaussianWeightedNegativeLoss", "HardPairLoss",
            "SoftMarginTripletLoss"]

from dmlscale.losses.batch_hard import BatchHardTripletLoss  # noqa: E402
from dmlscale.losses.distance_weighted_margin import DistanceWeightedMarginLoss  # noqa: E402

__all__ += ["BatchHardTripletLoss", "DistanceWeightedMarginLoss"]
