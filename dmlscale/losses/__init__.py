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
