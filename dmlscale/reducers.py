"""Reducers, importable as `dmlscale.reducers` like `pytorch_metric_learning.reducers`."""

from dmlscale.losses.reducers import (  # noqa: F401
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

__all__ = ["AvgNonZeroReducer", "BaseReducer", "ClassWeightedReducer", "DivisorReducer", "DoNothingReducer",
           "MeanReducer", "MultipleReducers", "PerAnchorReducer", "SumReducer", "ThresholdReducer"]
