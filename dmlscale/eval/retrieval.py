"""Image-text retrieval: Recall@K, mean and median rank in both directions, several captions per image.

Legend: N images, M captions, D embedding size, c rows in a query chunk.

Conventions of open_clip's `get_clip_metrics` (equal to it with one caption per image, tested): cosine
similarity, 1-based ranks, R@K = share of queries ranked <= K, median rank = floor of the median.
Image to text: an image is found at the rank of its best-ranked caption. Text to image: each caption
has one correct image. Ties: score descending, then index ascending (see topk.py).
"""

from __future__ import annotations

import torch

from dmlscale.eval.topk import DEFAULT_CHUNK_SIZE, check_features, first_positive_rank, score_chunks
from dmlscale.param_checks import check_positive_int

DIRECTIONS = ("image_to_text", "text_to_image")


def check_text_image_index(text_image_index_M: torch.Tensor, num_images: int, num_texts: int) -> None:
    """1-D integers in [0, N), one per caption, and every image with at least one caption."""
    if not torch.is_tensor(text_image_index_M):
        raise ValueError(f"text_image_index must be a torch.Tensor, got {type(text_image_index_M).__name__}")
    if text_image_index_M.ndim != 1 or text_image_index_M.shape[0] != num_texts:
        raise ValueError(f"text_image_index must have shape ({num_texts},) (one image per caption), "
                         f"got {tuple(text_image_index_M.shape)}")
    if text_image_index_M.is_floating_point() or text_image_index_M.is_complex() or text_image_index_M.dtype == torch.bool:
        raise ValueError(f"text_image_index must be an integer tensor, got dtype {text_image_index_M.dtype}")
    bad_M = (text_image_index_M < 0) | (text_image_index_M >= num_images)
    if bool(bad_M.any()):
        first = int(bad_M.nonzero()[0])
        raise ValueError(f"text_image_index[{first}]={int(text_image_index_M[first])} is outside [0, {num_images}) "
                         f"for {num_images} images")
    captions_N = torch.bincount(text_image_index_M.cpu(), minlength=num_images)
    if bool((captions_N == 0).any()):
        missing = (captions_N == 0).nonzero().squeeze(1)[:5].tolist()
        raise ValueError(f"images {missing} have no caption in text_image_index; every image needs at least one")


def retrieval_ranks(query_ND: torch.Tensor, query_keys_N: torch.Tensor, reference_MD: torch.Tensor,
                    reference_keys_M: torch.Tensor, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """1-based cosine rank of each query's best reference with the same key (0: none), chunk by chunk."""
    ranks = []
    for start, scores_cM in score_chunks(query_ND, reference_MD, distance="cosine", chunk_size=chunk_size):
        keys_c = query_keys_N[start:start + scores_cM.shape[0]]
        ranks.append(first_positive_rank(scores_cM, keys_c.unsqueeze(1) == reference_keys_M.unsqueeze(0)))
    return torch.cat(ranks)


def rank_summary(name: str, ranks_N: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    """{name}_R@k for each k, {name}_mean_rank and {name}_median_rank from 1-based ranks."""
    ranks_N = ranks_N.double().cpu()
    out = {f"{name}_R@{k}": (ranks_N <= k).double().mean().item() for k in ks}
    out[f"{name}_mean_rank"] = ranks_N.mean().item()
    out[f"{name}_median_rank"] = float(torch.floor(torch.quantile(ranks_N, 0.5)))
    return out


def retrieval_metrics(image_features_ND: torch.Tensor, text_features_MD: torch.Tensor,
                      text_image_index_M: torch.Tensor | None = None, *, ks: tuple[int, ...] = (1, 5, 10),
                      chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, float]:
    """Image-to-text and text-to-image Recall@K, mean and median rank.

    text_image_index_M[m] is the image of caption m (None: caption m belongs to image m, M == N).
    Keys: "image_to_text_R@1", ..., "image_to_text_mean_rank", "image_to_text_median_rank" and the
    same for "text_to_image". Peak memory ~ chunk_size x max(N, M) scores.
    """
    check_features("image_features", image_features_ND)
    check_features("text_features", text_features_MD)
    num_images, num_texts = len(image_features_ND), len(text_features_MD)
    if text_features_MD.shape[1] != image_features_ND.shape[1]:
        raise ValueError(f"image_features have dimension {image_features_ND.shape[1]} but text_features have "
                         f"{text_features_MD.shape[1]}")
    if text_image_index_M is None:
        if num_texts != num_images:
            raise ValueError(f"without text_image_index there must be one caption per image, got {num_images} "
                             f"images and {num_texts} captions")
        text_image_index_M = torch.arange(num_images)
    check_text_image_index(text_image_index_M, num_images, num_texts)
    if not isinstance(ks, (tuple, list)) or not ks:
        raise ValueError(f"ks must be a non-empty tuple of positive ints, got {ks!r}")
    for k in ks:
        check_positive_int("retrieval_metrics", "ks", k)
    check_positive_int("retrieval_metrics", "chunk_size", chunk_size)
    device = image_features_ND.device
    image_keys_N = torch.arange(num_images, device=device)
    text_keys_M = text_image_index_M.to(device)
    image_to_text_N = retrieval_ranks(image_features_ND, image_keys_N, text_features_MD, text_keys_M,
                                      chunk_size=chunk_size)
    text_to_image_M = retrieval_ranks(text_features_MD, text_keys_M, image_features_ND, image_keys_N,
                                      chunk_size=chunk_size)
    return {**rank_summary("image_to_text", image_to_text_N, tuple(ks)),
            **rank_summary("text_to_image", text_to_image_M, tuple(ks))}
