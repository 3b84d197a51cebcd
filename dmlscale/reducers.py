"""Reducers, importable as `dmlscale.reducers` like `pytorch_metric_learning.reducers`."""

from dmlscale.losses.reducers import (  # noqa: F401
    AvgNonZeroReducer,
    BaseReducer,
    DivisorReducer,
    DoNothingReducer,
    MeanReducer,
    MultipleReducers,
    SumReducer,
    ThresholdReducer,
)

__all__ = ["AvgNonZeroReducer", "BaseReducer", "DivisorReducer", "DoNothingReducer", "MeanReducer", "MultipleReducers",
           "SumReducer", "ThresholdReducer"]
