"""Nearest neighbours and ranks over a similarity, one query chunk at a time (memory linear in N).

Legend: N queries, M references, D embedding size, c rows in a query chunk, k neighbours.

Scores are "larger is nearer": cosine similarity, dot product, or minus the squared L2 distance.
Ties are broken deterministically: score descending, then reference index ascending. A query chunk
is scored against all references at once, so peak memory is about chunk_size x M scores (never N x M).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from dmlscale.inputs import check_embeddings
from dmlscale.param_checks import check_positive_int

DISTANCES = ("euclidean", "cosine", "dot")
BACKENDS = ("auto", "torch", "faiss")
DEFAULT_CHUNK_SIZE = 256


def check_distance(owner: str, distance: str) -> str:
    if distance not in DISTANCES:
        raise ValueError(f"{owner}: distance must be one of {DISTANCES}, got {distance!r}")
    return distance


def check_features(name: str, features: torch.Tensor) -> None:
    """2-D floating and finite (a NaN would silently poison every ranking)."""
    check_embeddings(name, features)
    if not bool(torch.isfinite(features).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def faiss_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("faiss") is not None


def resolve_backend(owner: str, backend: str) -> str:
    """'auto' is faiss when it is installed, else torch; 'faiss' without faiss is an error."""
    if backend not in BACKENDS:
        raise ValueError(f"{owner}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "faiss" and not faiss_available():
        raise ValueError(f"{owner}: backend='faiss' but faiss is not installed; use backend='torch' or 'auto'")
    if backend == "auto":
        return "faiss" if faiss_available() else "torch"
    return backend


def score_chunks(query_ND: torch.Tensor, reference_MD: torch.Tensor, *, distance: str = "cosine",
                 chunk_size: int = DEFAULT_CHUNK_SIZE, exclude_self: bool = False
                 ) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start, scores_cM) for consecutive query chunks of at most chunk_size rows.

    exclude_self: query i is reference row i (the first N references are the queries); its own
    score is set to -inf, so it is never a neighbour, never a positive and never ranked ahead.
    """
    check_distance("score_chunks", distance)
    check_positive_int("score_chunks", "chunk_size", chunk_size)
    if distance == "cosine":
        query_ND, reference_MD = F.normalize(query_ND, dim=1), F.normalize(reference_MD, dim=1)
    if distance == "euclidean":
        ref_sq_M = reference_MD.pow(2).sum(1)
    reference_DM = reference_MD.t()
    for start in range(0, query_ND.shape[0], chunk_size):
        query_cD = query_ND[start:start + chunk_size]
        if distance == "euclidean":  # -|q - r|^2 = 2 q.r - |r|^2 - |q|^2
            scores_cM = torch.addmm(ref_sq_M.unsqueeze(0), query_cD, reference_DM, beta=-1, alpha=2)
            scores_cM -= query_cD.pow(2).sum(1, keepdim=True)
        else:
            scores_cM = query_cD @ reference_DM
        if exclude_self:
            rows_c = torch.arange(scores_cM.shape[0], device=scores_cM.device)
            scores_cM[rows_c, start + rows_c] = float("-inf")
        yield start, scores_cM


def ordered_topk(scores_cM: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best (scores_ck, indices_ck) of each row, ordered by score descending, index ascending.

    torch.topk picks tied elements arbitrarily; rows whose k-th score is tied with an unselected one
    are re-selected with a stable full sort, the others only have their k picks reordered. For k
    near the row length one stable sort does it all.
    """
    if 4 * k >= scores_cM.shape[1]:  # a large share of the row: one stable sort is cheaper
        values_cM, indices_cM = scores_cM.sort(dim=1, descending=True, stable=True)
        return values_cM[:, :k], indices_cM[:, :k]
    values_ck, indices_ck = scores_cM.topk(k, dim=1)
    indices_ck, by_index_ck = indices_ck.sort(dim=1)
    values_ck, by_score_ck = values_ck.gather(1, by_index_ck).sort(dim=1, descending=True, stable=True)
    indices_ck = indices_ck.gather(1, by_score_ck)
    boundary_tie_c = (scores_cM >= values_ck[:, -1:]).sum(1) > k
    if bool(boundary_tie_c.any()):
        rows = boundary_tie_c.nonzero().squeeze(1)
        sorted_values, sorted_indices = scores_cM[rows].sort(dim=1, descending=True, stable=True)
        values_ck[rows], indices_ck[rows] = sorted_values[:, :k], sorted_indices[:, :k]
    return values_ck, indices_ck


def first_positive_rank(scores_cM: torch.Tensor, positive_cM: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's best positive in the full ranking (0 when a row has no positive).

    rank = 1 + number of references ordered before it (higher score, or equal score and lower index).
    """
    best_c = scores_cM.masked_fill(~positive_cM, float("-inf")).max(1).values
    best_index_c = (positive_cM & (scores_cM == best_c.unsqueeze(1))).int().argmax(1)
    columns_M = torch.arange(scores_cM.shape[1], device=scores_cM.device)
    ahead_cM = (scores_cM > best_c.unsqueeze(1)) | (
        (scores_cM == best_c.unsqueeze(1)) & (columns_M.unsqueeze(0) < best_index_c.unsqueeze(1)))
    ranks_c = ahead_cM.sum(1) + 1
    return torch.where(positive_cM.any(1), ranks_c, torch.zeros_like(ranks_c))


def check_k(owner: str, k: object, num_candidates: int) -> int:
    check_positive_int(owner, "k", k)
    if k > num_candidates:
        raise ValueError(f"{owner}: k={k} is larger than the {num_candidates} reference rows available")
    return k


def chunked_topk(query_ND: torch.Tensor, reference_MD: torch.Tensor, k: int, *, distance: str = "cosine",
                 chunk_size: int = DEFAULT_CHUNK_SIZE, exclude_self: bool = False, backend: str = "auto"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest references of every query: (scores_Nk, indices_Nk), nearest first.

    backend 'torch' applies the tie rule of this module; 'faiss' (flat exact index, float32) breaks
    ties its own way; 'auto' uses faiss when it is installed. With exclude_self the first N reference
    rows must be the queries themselves.
    """
    check_features("query", query_ND)
    check_features("reference", reference_MD)
    if query_ND.shape[1] != reference_MD.shape[1]:
        raise ValueError(f"query has dimension {query_ND.shape[1]} but reference has {reference_MD.shape[1]}")
    if exclude_self and reference_MD.shape[0] < query_ND.shape[0]:
        raise ValueError(f"exclude_self needs the {query_ND.shape[0]} queries among the {reference_MD.shape[0]} references")
    check_k("chunked_topk", k, reference_MD.shape[0] - int(exclude_self))
    check_distance("chunked_topk", distance)
    if resolve_backend("chunked_topk", backend) == "faiss":
        return _faiss_topk(query_ND, reference_MD, k, distance=distance, exclude_self=exclude_self)
    parts = [ordered_topk(scores_cM, k) for _, scores_cM in
             score_chunks(query_ND, reference_MD, distance=distance, chunk_size=chunk_size, exclude_self=exclude_self)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _faiss_topk(query_ND, reference_MD, k, *, distance, exclude_self):
    """Exact search with a flat faiss index; the self match is dropped as in PML's FaissKNN."""
    import faiss

    if distance == "cosine":
        query_ND, reference_MD = F.normalize(query_ND, dim=1), F.normalize(reference_MD, dim=1)
    index = (faiss.IndexFlatL2 if distance == "euclidean" else faiss.IndexFlatIP)(query_ND.shape[1])
    index.add(reference_MD.detach().float().cpu().contiguous().numpy())
    found = k + int(exclude_self)
    scores, indices = index.search(query_ND.detach().float().cpu().contiguous().numpy(), found)
    scores_Nk = torch.from_numpy(scores).to(query_ND.device)
    indices_Nk = torch.from_numpy(indices).long().to(query_ND.device)
    if distance == "euclidean":
        scores_Nk = -scores_Nk
    if exclude_self:
        is_self_Nk = indices_Nk == torch.arange(len(indices_Nk), device=indices_Nk.device).unsqueeze(1)
        is_self_Nk[~is_self_Nk.any(1), -1] = True
        keep = ~is_self_Nk
        scores_Nk, indices_Nk = scores_Nk[keep].view(-1, k), indices_Nk[keep].view(-1, k)
    return scores_Nk, indices_Nk
