"""Evaluation: retrieval, zero-shot and metric-learning accuracy, chunked (memory linear in N).

Single-process functions are imported here; the distributed ones (dmlscale.eval.gather) load on
first use, so importing dmlscale.eval stays light (no scikit-learn, no torch.distributed set-up).
"""

from dmlscale.eval.accuracy_calculator import AccuracyCalculator
from dmlscale.eval.inference_model import InferenceModel, MatchFinder
from dmlscale.eval.knn import CustomKNN, FaissKMeans, FaissKNN
from dmlscale.eval.metric import METRICS, metric_accuracy
from dmlscale.eval.retrieval import retrieval_metrics
from dmlscale.eval.topk import chunked_topk
from dmlscale.eval.zeroshot import zero_shot_accuracy, zero_shot_classifier

_DISTRIBUTED = ("distributed_metric_accuracy", "distributed_retrieval_metrics", "distributed_zero_shot_accuracy")

__all__ = ["AccuracyCalculator", "CustomKNN", "FaissKMeans", "FaissKNN", "InferenceModel", "METRICS", "MatchFinder", "chunked_topk", "metric_accuracy", "retrieval_metrics", "zero_shot_accuracy",
           "zero_shot_classifier", *_DISTRIBUTED]


def __getattr__(name: str):
    if name in _DISTRIBUTED:
        from dmlscale.eval import gather

        return getattr(gather, name)
    raise AttributeError(f"module 'dmlscale.eval' has no attribute {name!r}")
