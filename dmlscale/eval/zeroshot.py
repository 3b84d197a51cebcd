"""Zero-shot classification: a classifier from class names and prompt templates, and top-k accuracy.

Legend: N images, C classes, T templates, D embedding size, c rows in an image chunk.

The classifier is open_clip's: for each class, the mean of the L2-normalised embeddings of its T
prompts, normalised again, as a D x C matrix (equal to open_clip's build_zero_shot_classifier, tested).
Accuracy: an image is correct at top-k when its true class ranks <= k among the C logits; ties go to
the lower class index (deterministic, unlike torch.topk).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from dmlscale.eval.metric import check_integer_labels
from dmlscale.eval.topk import DEFAULT_CHUNK_SIZE, check_features, first_positive_rank, score_chunks
from dmlscale.param_checks import check_positive_int

Template = str | Callable[[str], str]


def prompts_for(classname: str, templates: Sequence[Template]) -> list[str]:
    """A template is a format string with one "{}" (or "{c}") or a callable taking the class name."""
    return [t(classname) if callable(t) else t.format(classname, c=classname) for t in templates]


def zero_shot_classifier(encode_text: Callable[[torch.Tensor], torch.Tensor],
                         tokenize: Callable[[list[str]], torch.Tensor], classnames: Sequence[str],
                         templates: Sequence[Template], *, batch_size: int = 256) -> torch.Tensor:
    """D x C class embeddings; encode_text is called on at most batch_size prompts at a time, without grad.

    encode_text receives tokenize(prompts) as returned (move it to the model's device inside
    encode_text). Memory: one batch of prompts plus C x D sums.
    """
    if isinstance(classnames, str) or not classnames:
        raise ValueError(f"classnames must be a non-empty list of class names, got {classnames!r}")
    if isinstance(templates, str) or not templates:
        raise ValueError(f"templates must be a non-empty list of templates, got {templates!r}")
    check_positive_int("zero_shot_classifier", "batch_size", batch_size)
    prompts = [p for name in classnames for p in prompts_for(name, templates)]
    class_of_prompt = torch.arange(len(classnames)).repeat_interleave(len(templates))
    sums_CD = None
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            embeddings_bD = F.normalize(encode_text(tokenize(prompts[start:start + batch_size])).float(), dim=-1)
            if sums_CD is None:
                sums_CD = embeddings_bD.new_zeros(len(classnames), embeddings_bD.shape[1])
            sums_CD.index_add_(0, class_of_prompt[start:start + batch_size].to(sums_CD.device), embeddings_bD)
    return F.normalize(sums_CD / len(templates), dim=1).t()


def zero_shot_accuracy(image_features_ND: torch.Tensor, labels_N: torch.Tensor, classifier_DC: torch.Tensor, *,
                       topk: tuple[int, ...] = (1, 5), chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, float]:
    """{"top1": ..., "top5": ...}: share of images whose class is among the k highest logits.

    A k >= C counts every image correct (the true class is always among all C).
    """
    check_features("image_features", image_features_ND)
    check_features("classifier", classifier_DC)
    num_classes = classifier_DC.shape[1]
    if classifier_DC.shape[0] != image_features_ND.shape[1]:
        raise ValueError(f"classifier has shape {tuple(classifier_DC.shape)} (D x C) but image_features have "
                         f"dimension {image_features_ND.shape[1]}")
    check_integer_labels("labels", labels_N, len(image_features_ND))
    bad_N = (labels_N < 0) | (labels_N >= num_classes)
    if bool(bad_N.any()):
        first = int(bad_N.nonzero()[0])
        raise ValueError(f"labels[{first}]={int(labels_N[first])} is outside [0, {num_classes}) for {num_classes} classes")
    if not isinstance(topk, (tuple, list)) or not topk:
        raise ValueError(f"topk must be a non-empty tuple of positive ints, got {topk!r}")
    for k in topk:
        check_positive_int("zero_shot_accuracy", "topk", k)
    labels_N = labels_N.to(image_features_ND.device)
    classes_C = torch.arange(num_classes, device=image_features_ND.device)
    ranks = []
    for start, logits_cC in score_chunks(image_features_ND, classifier_DC.t(), distance="dot", chunk_size=chunk_size):
        labels_c = labels_N[start:start + logits_cC.shape[0]]
        ranks.append(first_positive_rank(logits_cC, labels_c.unsqueeze(1) == classes_C.unsqueeze(0)))
    ranks_N = torch.cat(ranks)
    return {f"top{k}": (ranks_N <= k).double().mean().item() for k in topk}
