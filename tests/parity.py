"""Shared helpers for parity tests against pytorch-metric-learning (the reference implementation).

Legend: B batch, R reference rows, D embedding size.
"""

from __future__ import annotations


import pytest
import torch

import dmlscale.distances as ours_d

pml_d = pytest.importorskip("pytorch_metric_learning.distances")

TOL = 1e-10

# (name, kwargs) for every distance setting the issue lists; each builds our and PML's object.
DISTANCE_SETTINGS = [
    ("LpDistance", dict(p=2, power=1, normalize_embeddings=True)),
    ("LpDistance", dict(p=2, power=2, normalize_embeddings=True)),
    ("LpDistance", dict(p=2, power=1, normalize_embeddings=False)),
    ("LpDistance", dict(p=2, power=2, normalize_embeddings=False)),
    ("LpDistance", dict(p=1, power=1, normalize_embeddings=True)),
    ("LpDistance", dict(p=1, power=2, normalize_embeddings=False)),
    ("CosineSimilarity", dict()),
    ("DotProductSimilarity", dict(normalize_embeddings=False)),
    ("DotProductSimilarity", dict()),
    ("SNRDistance", dict()),
]
DISTANCE_IDS = [f"{n}-" + "-".join(f"{k}={v}" for k, v in kw.items()) for n, kw in DISTANCE_SETTINGS]


def make_distances(name: str, kwargs: dict):
    return getattr(ours_d, name)(**kwargs), getattr(pml_d, name)(**kwargs)


def make_batch(seed: int, batch_size: int = 12, dim: int = 5, num_classes: int = 3, scale: float = 1.0):
    """Random float64 embeddings with several positives per class (every class has >= 2 members)."""
    gen = torch.Generator().manual_seed(seed)
    emb_BD = torch.randn(batch_size, dim, generator=gen, dtype=torch.float64) * scale
    labels_B = torch.arange(batch_size) % num_classes
    labels_B = labels_B[torch.randperm(batch_size, generator=gen)]
    return emb_BD, labels_B


def value_and_grads(loss_fn, inputs: list[torch.Tensor], **call_kwargs):
    """Run loss_fn on fresh leaf copies of inputs; return (value, [grad per input])."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = loss_fn(*leaves, **call_kwargs)
    out.backward()
    grads = [torch.zeros_like(x) if x.grad is None else x.grad for x in leaves]
    return out.detach(), grads


def assert_close(ours, theirs, tol: float = TOL, what: str = "value") -> None:
    ours = torch.as_tensor(ours, dtype=torch.float64)
    theirs = torch.as_tensor(theirs, dtype=torch.float64)
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} vs PML {tuple(theirs.shape)}"
    diff = (ours - theirs).abs().max().item() if ours.numel() else 0.0
    assert diff <= tol, f"{what}: max abs diff {diff:.3e} > {tol:.0e} (ours {ours}, PML {theirs})"


def compare_losses(ours_loss, pml_loss, emb_BD, labels_B, *, indices_tuple=None, ref_emb=None, ref_labels=None,
                   tol: float = TOL, seed: int | None = None):
    """Assert value and gradients (w.r.t. embeddings and ref_emb) match PML; returns our value."""
    inputs = [emb_BD] if ref_emb is None else [emb_BD, ref_emb]

    def call(loss):
        def run(*leaves):
            if seed is not None:
                torch.manual_seed(seed)
            kwargs = dict(indices_tuple=indices_tuple)
            if ref_emb is not None:
                kwargs.update(ref_emb=leaves[1], ref_labels=ref_labels)
            return loss(leaves[0], labels_B, **kwargs)
        return run

    ours_value, ours_grads = value_and_grads(call(ours_loss), inputs)
    pml_value, pml_grads = value_and_grads(call(pml_loss), inputs)
    assert torch.isfinite(ours_value), f"non-finite loss {ours_value}"
    assert_close(ours_value, pml_value, tol, "loss value")
    for i, (g_ours, g_pml) in enumerate(zip(ours_grads, pml_grads)):
        assert_close(g_ours, g_pml, tol, f"gradient of input {i}")
    return ours_value


def pair_tuple_from_labels(labels_B, seed: int, ref_labels=None):
    """A random subset of all positive and negative pairs (what a pair miner would return)."""
    from dmlscale.indices import all_pairs

    gen = torch.Generator().manual_seed(seed)
    a1, p, a2, n = all_pairs(labels_B, ref_labels)
    keep_pos = torch.rand(len(a1), generator=gen) < 0.6
    keep_neg = torch.rand(len(a2), generator=gen) < 0.4
    return a1[keep_pos], p[keep_pos], a2[keep_neg], n[keep_neg]


def triplet_tuple_from_labels(labels_B, seed: int, ref_labels=None):
    """A random subset of all triplets (what a triplet miner would return)."""
    from dmlscale.indices import all_triplets

    gen = torch.Generator().manual_seed(seed)
    a, p, n = all_triplets(labels_B, ref_labels)
    keep = torch.rand(len(a), generator=gen) < 0.3
    return a[keep], p[keep], n[keep]


INPUT_MODES = ["labels", "pairs", "triplets", "ref_emb"]


def run_mode(mode: str, ours_loss, pml_loss, seed: int, *, scale: float = 1.0, batch_size: int = 12, dim: int = 5,
             num_classes: int = 3, tol: float = TOL):
    """Compare one loss pair in one input mode: labels only, pair tuple, triplet tuple, or ref_emb."""
    emb_BD, labels_B = make_batch(seed, batch_size=batch_size, dim=dim, num_classes=num_classes, scale=scale)
    if mode == "labels":
        return compare_losses(ours_loss, pml_loss, emb_BD, labels_B, tol=tol)
    if mode == "pairs":
        return compare_losses(ours_loss, pml_loss, emb_BD, labels_B,
                              indices_tuple=pair_tuple_from_labels(labels_B, seed), tol=tol)
    if mode == "triplets":
        return compare_losses(ours_loss, pml_loss, emb_BD, labels_B,
                              indices_tuple=triplet_tuple_from_labels(labels_B, seed), tol=tol)
    if mode == "ref_emb":
        ref_RD, ref_labels_R = make_batch(seed + 1000, batch_size=batch_size + 3, dim=dim, num_classes=num_classes,
                                          scale=scale)
        return compare_losses(ours_loss, pml_loss, emb_BD, labels_B, ref_emb=ref_RD, ref_labels=ref_labels_R, tol=tol)
    raise ValueError(mode)


__all__ = [
    "DISTANCE_IDS", "DISTANCE_SETTINGS", "INPUT_MODES", "TOL", "assert_close", "compare_losses",
    "make_batch", "make_distances", "pair_tuple_from_labels", "run_mode", "triplet_tuple_from_labels",
    "value_and_grads",
]
