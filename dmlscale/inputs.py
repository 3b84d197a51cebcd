"""Input checks shared by distances, losses and miners: embeddings, labels and the reference batch.

A neutral module (it imports only torch), so that `losses/` and `miners/` can both build on it
without importing each other.
"""

from __future__ import annotations

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


def resolve_inputs(embeddings, labels, ref_emb, ref_labels):
    """Validate shapes and default the reference batch to the query batch (same objects, so
    `ref_labels is labels` tells the self-comparison case)."""
    check_embeddings("embeddings", embeddings)
    check_labels("labels", labels, len(embeddings))
    if labels is not None:
        labels = labels.to(embeddings.device)
    if ref_emb is None:
        if ref_labels is not None:
            raise ValueError("ref_labels was given without ref_emb")
        return embeddings, labels, embeddings, labels
    check_embeddings("ref_emb", ref_emb)
    if ref_emb.shape[1] != embeddings.shape[1]:
        raise ValueError(f"embeddings have size {embeddings.shape[1]} but ref_emb has size {ref_emb.shape[1]}")
    check_labels("ref_labels", ref_labels, len(ref_emb))
    if labels is not None and ref_labels is None:
        raise ValueError("labels were given with ref_emb but ref_labels is None; pass ref_labels too")
    if ref_labels is not None:
        ref_labels = ref_labels.to(ref_emb.device)
    return embeddings, labels, ref_emb, ref_labels
