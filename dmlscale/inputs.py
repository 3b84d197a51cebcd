"""The input contract of the library: what valid embeddings, labels, a reference batch and a self
index are, checked in one place for distances, losses, miners, memory and eval.

It imports only torch: every part of the library below the application checks its inputs here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def check_embeddings(name: str, emb: torch.Tensor) -> None:
    """Raise a ValueError naming `name` unless `emb` is a 2-D floating tensor."""
    if not torch.is_tensor(emb):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(emb).__name__}")
    if emb.ndim != 2:
        raise ValueError(f"{name} must have shape (batch_size, embedding_size), got {tuple(emb.shape)}")
    if not emb.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got dtype {emb.dtype}")


def check_labels(name: str, labels: torch.Tensor | None, num_rows: int) -> None:
    """Raise a ValueError naming `name` unless labels is None or a 1-D tensor of length num_rows."""
    if labels is None:
        return
    if not torch.is_tensor(labels):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.ndim != 1:
        raise ValueError(f"{name} must be a 1-D tensor of shape (batch_size,), got {tuple(labels.shape)}")
    if labels.shape[0] != num_rows:
        raise ValueError(f"{name} has {labels.shape[0]} entries but there are {num_rows} embeddings")


def default_query_ref_index(num_query: int, has_ref: bool, device: torch.device | str | None) -> torch.Tensor:
    """The implicit self index: arange(B) when the batch is compared with itself, all -1 with a separate ref_emb."""
    if has_ref:
        return torch.full((num_query,), -1, dtype=torch.long, device=device)
    return torch.arange(num_query, dtype=torch.long, device=device)


def check_query_ref_index(query_ref_index: object, num_query: int, num_ref: int) -> None:
    """Raise a ValueError naming the bad values unless it is a 1-D integer tensor of length B in [-1, R)."""
    if not torch.is_tensor(query_ref_index):
        raise ValueError(f"query_ref_index must be a torch.Tensor, got {type(query_ref_index).__name__}")
    if query_ref_index.ndim != 1:
        raise ValueError(f"query_ref_index must be 1-D of shape (batch_size,), got {tuple(query_ref_index.shape)}")
    if query_ref_index.is_floating_point() or query_ref_index.is_complex() or query_ref_index.dtype == torch.bool:
        raise ValueError(f"query_ref_index must be an integer tensor, got dtype {query_ref_index.dtype}")
    if query_ref_index.shape[0] != num_query:
        raise ValueError(
            f"query_ref_index has {query_ref_index.shape[0]} entries but there are {num_query} embeddings"
        )
    bad = (query_ref_index < -1) | (query_ref_index >= num_ref)
    if bool(bad.any()):
        rows = torch.where(bad)[0]
        shown = ", ".join(f"[{int(i)}]={int(query_ref_index[i])}" for i in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        raise ValueError(
            f"query_ref_index has values outside [-1, {num_ref}) for {num_ref} reference rows: {shown}{more}"
        )


def check_batch(name: str, emb: torch.Tensor) -> None:
    """Raise a ValueError naming `name` unless `emb` is a floating tensor with a batch dimension (any rank)."""
    if not torch.is_tensor(emb):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(emb).__name__}")
    if emb.ndim == 0:
        raise ValueError(f"{name} must have a batch dimension, got a 0-D tensor")
    if not emb.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got dtype {emb.dtype}")


def resolve_inputs(embeddings: torch.Tensor, labels: torch.Tensor | None, ref_emb: torch.Tensor | None,
                   ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor | None = None, *,
                   check_shapes: Callable[[torch.Tensor, torch.Tensor | None], None] | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Validate shapes, default the reference batch to the query batch and resolve the self index.

    Returns (embeddings, labels, ref_emb, ref_labels, query_ref_index). `query_ref_index[i]` is the
    reference row that holds query row i itself (-1: none); self pairs (i, query_ref_index[i]) are
    never positives. Default: arange(B) without ref_emb, all -1 with it (PML's semantics).
    `check_shapes(embeddings, ref_emb_or_None)`, when given, judges the embedding shapes instead of
    the 2-D rule (a loss or miner passes its distance's, as PML leaves that check to the distance, so
    a custom distance may admit (B, K, D) embeddings); the batch dimension is checked here either way.
    """
    if check_shapes is None:
        check_embeddings("embeddings", embeddings)
    else:
        check_batch("embeddings", embeddings)
        check_batch("ref_emb", embeddings if ref_emb is None else ref_emb)
        check_shapes(embeddings, ref_emb)
    check_labels("labels", labels, len(embeddings))
    if labels is not None:
        labels = labels.to(embeddings.device)
    has_ref = ref_emb is not None
    if not has_ref:
        if ref_labels is not None:
            raise ValueError("ref_labels was given without ref_emb")
        ref_emb, ref_labels = embeddings, labels
    else:
        if check_shapes is None:
            check_embeddings("ref_emb", ref_emb)
            if ref_emb.shape[1] != embeddings.shape[1]:
                raise ValueError(f"embeddings have size {embeddings.shape[1]} but ref_emb has size {ref_emb.shape[1]}")
        check_labels("ref_labels", ref_labels, len(ref_emb))
        if labels is not None and ref_labels is None:
            raise ValueError("labels were given with ref_emb but ref_labels is None; pass ref_labels too")
        if ref_labels is not None:
            ref_labels = ref_labels.to(ref_emb.device)
    if query_ref_index is None:
        query_ref_index = default_query_ref_index(len(embeddings), has_ref, embeddings.device)
    else:
        check_query_ref_index(query_ref_index, len(embeddings), len(ref_emb))
        query_ref_index = query_ref_index.to(device=embeddings.device, dtype=torch.long)
    return embeddings, labels, ref_emb, ref_labels, query_ref_index
