"""Distributed evaluation: each rank passes the features it embedded, rank 0 scores them all.

Legend: n, m local rows on this rank; N, M global rows (all ranks, in rank order); D embedding size.

Flow: local input checks are shared first (a bad input on any rank raises the same ValueError on
every rank, no hang); features and labels are gathered without grad (local sizes may differ); rank 0
computes the single-process metric on the gathered rows; the result is broadcast, so EVERY rank
returns the same dict (log it from rank 0). Results equal the single-process call on the
concatenated rows (tested with 2 gloo processes and unequal sizes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dmlscale.distributed.collectives import global_offsets, world_rank_and_size
from dmlscale.distributed.eval_gather import gather_rows, raise_if_any_rank_failed, score_on_rank0
from dmlscale.eval.metric import check_integer_labels, metric_accuracy
from dmlscale.eval.retrieval import check_text_image_index, retrieval_metrics
from dmlscale.eval.topk import check_features
from dmlscale.eval.zeroshot import zero_shot_accuracy


def _local_error(check: Callable[[], None]) -> str | None:
    try:
        check()
    except ValueError as error:
        return str(error)
    return None


def _check_pair(name: str, features: torch.Tensor, labels: torch.Tensor) -> None:
    check_features(name, features)
    check_integer_labels(f"{name} labels", labels, len(features))


def distributed_metric_accuracy(query_nD: torch.Tensor, query_labels_n: torch.Tensor,
                                reference_mD: torch.Tensor | None = None, reference_labels_m: torch.Tensor | None = None,
                                *, group: ProcessGroup | None = None, **kwargs: object) -> dict[str, float]:
    """metric_accuracy (same keyword arguments) on every rank's queries and references together."""
    def check() -> None:
        _check_pair("query", query_nD, query_labels_n)
        if reference_mD is not None or reference_labels_m is not None:
            if reference_mD is None or reference_labels_m is None:
                raise ValueError("reference and reference_labels must be given together")
            _check_pair("reference", reference_mD, reference_labels_m)

    raise_if_any_rank_failed(_local_error(check), group, agree={"reference given": reference_mD is not None})
    query_ND, _ = gather_rows(query_nD, group, name="query")
    labels_N, _ = gather_rows(query_labels_n, group, name="query labels")
    reference_MD = reference_labels_M = None
    if reference_mD is not None:
        reference_MD, _ = gather_rows(reference_mD, group, name="reference")
        reference_labels_M, _ = gather_rows(reference_labels_m, group, name="reference labels")
    return score_on_rank0(lambda: metric_accuracy(query_ND, labels_N, reference_MD, reference_labels_M, **kwargs),
                          group)


def distributed_retrieval_metrics(image_features_nD: torch.Tensor, text_features_mD: torch.Tensor,
                                  text_image_index_m: torch.Tensor | None = None, *,
                                  group: ProcessGroup | None = None, **kwargs: object) -> dict[str, float]:
    """retrieval_metrics over all ranks. text_image_index_m indexes this rank's OWN images (0..n-1):
    each caption lives on the rank of its image; it is shifted to global image rows here."""
    def check() -> None:
        check_features("image_features", image_features_nD)
        check_features("text_features", text_features_mD)
        if text_image_index_m is not None:
            check_text_image_index(text_image_index_m, len(image_features_nD), len(text_features_mD))
        elif len(text_features_mD) != len(image_features_nD):
            raise ValueError(f"without text_image_index there must be one caption per image, got "
                             f"{len(image_features_nD)} images and {len(text_features_mD)} captions")

    raise_if_any_rank_failed(_local_error(check), group)
    local_index_m = (torch.arange(len(image_features_nD), device=image_features_nD.device)
                     if text_image_index_m is None else text_image_index_m.to(image_features_nD.device))
    image_features_ND, image_sizes = gather_rows(image_features_nD, group, name="image features")
    rank, _ = world_rank_and_size(group)
    text_features_MD, _ = gather_rows(text_features_mD, group, name="text features")
    text_image_index_M, _ = gather_rows(local_index_m.long() + global_offsets(image_sizes)[rank], group,
                                        name="text image index")
    return score_on_rank0(lambda: retrieval_metrics(image_features_ND, text_features_MD, text_image_index_M,
                                                    **kwargs), group)


def distributed_zero_shot_accuracy(image_features_nD: torch.Tensor, labels_n: torch.Tensor,
                                   classifier_DC: torch.Tensor, *, group: ProcessGroup | None = None,
                                   **kwargs: object) -> dict[str, float]:
    """zero_shot_accuracy over all ranks' images; rank 0's classifier is used."""
    raise_if_any_rank_failed(_local_error(lambda: _check_pair("image_features", image_features_nD, labels_n)), group)
    image_features_ND, _ = gather_rows(image_features_nD, group, name="image features")
    labels_N, _ = gather_rows(labels_n, group, name="labels")
    return score_on_rank0(lambda: zero_shot_accuracy(image_features_ND, labels_N, classifier_DC, **kwargs), group)
