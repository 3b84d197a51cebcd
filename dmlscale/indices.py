"""Index tuples: which (anchor, positive) pairs, (anchor, negative) pairs and triplets a loss uses.

Conventions (PML's): a pair tuple is (a1, p, a2, n), a triplet tuple is (a, p, n); anchors index the
query batch, positives/negatives index the reference batch. `query_ref_index[i]` names the reference
row that holds query row i itself (-1: none); self pairs (i, query_ref_index[i]) are never positives.
When it is None it defaults to arange(B) if ref_labels is None (the batch compared with itself) and to
all -1 otherwise (ref_labels being the labels tensor itself counts as None), which is PML's behaviour
with and without a reference batch.

Legend: B query rows, R reference rows, T triplets.
"""

from __future__ import annotations

import torch


def resolve_query_ref_index(labels: torch.Tensor, ref_labels: torch.Tensor | None,
                            query_ref_index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ref_labels, query_ref_index) with the defaults above filled in; `ref_labels is labels` (the same
    tensor, PML's test) counts as the batch compared with itself."""
    if query_ref_index is None:
        if ref_labels is None or ref_labels is labels:
            query_ref_index = torch.arange(len(labels), device=labels.device)
        else:
            query_ref_index = torch.full((len(labels),), -1, dtype=torch.long, device=labels.device)
    return (labels if ref_labels is None else ref_labels), query_ref_index


def implicit_self_index(labels: torch.Tensor, ref_labels: torch.Tensor | None,
                        query_ref_index: torch.Tensor | None = None) -> torch.Tensor:
    """`query_ref_index`, or when None PML's implicit one (see resolve_query_ref_index): lets a miner's
    `mine(embeddings, labels, ref_emb, ref_labels)` be called without it, as in PML."""
    return resolve_query_ref_index(labels, ref_labels, query_ref_index)[1]


def self_pairs(query_ref_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the self pairs (i, query_ref_index[i]) that exist."""
    rows = torch.where(query_ref_index >= 0)[0]
    return rows, query_ref_index[rows]


def self_mask(query_ref_index: torch.Tensor, num_ref: int) -> torch.Tensor:
    """Boolean B x R mask, True exactly at the self pairs."""
    mask_BR = torch.zeros(len(query_ref_index), num_ref, dtype=torch.bool, device=query_ref_index.device)
    mask_BR[self_pairs(query_ref_index)] = True
    return mask_BR


def check_indices_tuple(indices_tuple: tuple[torch.Tensor, ...] | list[torch.Tensor] | None, num_query: int,
                        num_ref: int) -> None:
    """Validate a pair (4) or triplet (3) tuple against the batch sizes, naming the bad entry."""
    if indices_tuple is None:
        return
    if not isinstance(indices_tuple, (tuple, list)) or len(indices_tuple) not in (3, 4):
        raise ValueError(
            "indices_tuple must be (anchors, positives, negatives) or (anchors1, positives, anchors2, negatives), "
            f"got {type(indices_tuple).__name__} of length {len(indices_tuple) if hasattr(indices_tuple, '__len__') else '?'}"
        )
    roles = ("a", "p", "n") if len(indices_tuple) == 3 else ("a1", "p", "a2", "n")
    for role, idx in zip(roles, indices_tuple):
        if not torch.is_tensor(idx) or idx.ndim != 1 or idx.is_floating_point():
            raise ValueError(f"indices_tuple[{role}] must be a 1-D integer tensor, got {idx!r}")
        limit = num_query if role.startswith("a") else num_ref
        if len(idx) > 0 and (int(idx.min()) < 0 or int(idx.max()) >= limit):
            raise ValueError(
                f"indices_tuple[{role}] has values in [{int(idx.min())}, {int(idx.max())}], "
                f"outside [0, {limit}) for a batch of {limit}"
            )
    if len(indices_tuple[0]) != len(indices_tuple[1]) or len(indices_tuple[-2]) != len(indices_tuple[-1]):
        raise ValueError(f"indices_tuple lengths do not match: {[len(x) for x in indices_tuple]}")


def matches_and_diffs(labels: torch.Tensor, ref_labels: torch.Tensor | None = None,
                      query_ref_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean B x R masks of same-label pairs (self pairs removed) and different-label pairs."""
    ref_labels, query_ref_index = resolve_query_ref_index(labels, ref_labels, query_ref_index)
    same_BR = labels[:, None] == ref_labels[None, :]
    diff_BR = ~same_BR
    same_BR[self_pairs(query_ref_index)] = False
    return same_BR, diff_BR


def all_pairs(
    labels: torch.Tensor, ref_labels: torch.Tensor | None = None, query_ref_index: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a1, p, a2, n) for every positive and every negative pair, in row-major order."""
    same_BR, diff_BR = matches_and_diffs(labels, ref_labels, query_ref_index)
    a1, p = torch.where(same_BR)
    a2, n = torch.where(diff_BR)
    return a1, p, a2, n


def all_triplets(labels: torch.Tensor, ref_labels: torch.Tensor | None = None,
                 query_ref_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (a, p, n) triplet, ordered by a, then p, then n.

    Built from the pair lists with repeat_interleave: memory is the number of triplets, never the
    dense B x R x R mask.
    """
    same_BR, diff_BR = matches_and_diffs(labels, ref_labels, query_ref_index)
    a_P, p_P = torch.where(same_BR)
    a_N, n_N = torch.where(diff_BR)
    num_neg_B = diff_BR.sum(dim=1)
    neg_start_B = torch.cumsum(num_neg_B, 0) - num_neg_B
    reps_P = num_neg_B[a_P]
    a_T = torch.repeat_interleave(a_P, reps_P)
    p_T = torch.repeat_interleave(p_P, reps_P)
    # position of each triplet inside its (a, p) block: 0 .. num_neg[a]-1
    block_start_P = torch.cumsum(reps_P, 0) - reps_P
    offset_T = torch.arange(len(a_T), device=labels.device) - torch.repeat_interleave(block_start_P, reps_P)
    n_T = n_N[neg_start_B[a_T] + offset_T]
    return a_T, p_T, n_T


def convert_to_pairs(indices_tuple: tuple[torch.Tensor, ...] | None, labels: torch.Tensor | None,
                     ref_labels: torch.Tensor | None = None,
                     query_ref_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Any tuple (or None: all pairs from labels) as (a1, p, a2, n)."""
    if indices_tuple is None:
        return all_pairs(labels, ref_labels, query_ref_index)
    if len(indices_tuple) == 4:
        return tuple(indices_tuple)
    a, p, n = indices_tuple
    return a, p, a, n


def convert_to_triplets(indices_tuple: tuple[torch.Tensor, ...] | None, labels: torch.Tensor | None,
                        ref_labels: torch.Tensor | None = None, triplets_per_anchor: int | str = "all", *,
                        query_ref_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Any tuple (or None: triplets from labels) as (a, p, n); pairs join on a shared anchor."""
    if indices_tuple is None:
        if triplets_per_anchor == "all":
            return all_triplets(labels, ref_labels, query_ref_index)
        return random_triplets(labels, ref_labels, triplets_per_anchor=triplets_per_anchor,
                               query_ref_index=query_ref_index)
    if len(indices_tuple) == 3:
        return tuple(indices_tuple)
    a1, p, a2, n = indices_tuple
    pos_idx, neg_idx = torch.where(a1[:, None] == a2[None, :])
    return a1[pos_idx], p[pos_idx], n[neg_idx]


def random_triplets(labels: torch.Tensor, ref_labels: torch.Tensor | None = None,
                    triplets_per_anchor: int | None = None, weights_BR: torch.Tensor | None = None, *,
                    query_ref_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Sample `triplets_per_anchor` (default: the number of positives) triplets per anchor, label by label.

    Positives uniformly among the anchor's positives (self pair excluded); negatives uniformly, or by
    the rows of `weights_BR` when given. In PML's two cases (the batch against itself, i.e.
    query_ref_index = arange(B) with equal labels, or no self rows at all: all -1) this draws from
    torch's global generator in the same order as PML, so a seeded run picks the same triplets. Any
    other query_ref_index (a block of a larger reference batch, queue positions) excludes each
    anchor's own column: positives are drawn as floor(u * num_candidates) with u ~ U[0, 1) from
    torch.rand and shifted past the anchor's own position among the label's reference rows.
    """
    device = labels.device
    ref_labels, query_ref_index = resolve_query_ref_index(labels, ref_labels, query_ref_index)
    if bool((query_ref_index < 0).all()):
        mode = "ref"
    elif (len(labels) == len(ref_labels)
          and torch.equal(query_ref_index, torch.arange(len(labels), device=query_ref_index.device))
          and torch.equal(labels, ref_labels)):
        mode = "self"
    else:
        mode = "general"
    parts_a, parts_p, parts_n = [], [], []
    for label in torch.unique(labels):
        pos_R = torch.where(ref_labels == label)[0]
        anchors = pos_R if mode == "self" else torch.where(labels == label)[0]
        neg_R = torch.where(ref_labels != label)[0]
        num_anchors, num_pos = len(anchors), len(pos_R)
        if num_pos < (2 if mode == "self" else 1) or len(neg_R) < 1:
            continue
        k = num_pos if triplets_per_anchor is None else triplets_per_anchor
        if mode == "general":
            # position of each anchor's own row among pos_R (num_pos when it is not there)
            own_A = query_ref_index[anchors]
            own_pos_A = torch.searchsorted(pos_R, own_A)
            has_own_A = (own_pos_A < num_pos) & (pos_R[own_pos_A.clamp(max=num_pos - 1)] == own_A)
            own_pos_A = torch.where(has_own_A, own_pos_A, torch.full_like(own_pos_A, num_pos))
            num_cand_A = num_pos - has_own_A.long()
            keep_A = num_cand_A > 0
            anchors, own_pos_A, num_cand_A = anchors[keep_A], own_pos_A[keep_A], num_cand_A[keep_A]
            num_anchors = len(anchors)
            if num_anchors == 0:
                continue
            row = torch.arange(num_anchors, device=device).repeat_interleave(k)
            u = torch.rand(num_anchors * k).to(device)
            pick = torch.minimum((u * num_cand_A[row]).long(), num_cand_A[row] - 1)
            pick = pick + (pick >= own_pos_A[row]).long()
            p = pos_R[pick]
            a = anchors[row]
        else:
            candidates = pos_R.expand(num_anchors, num_pos)
            if mode == "self":
                candidates = candidates[~torch.eye(num_anchors, dtype=torch.bool)].view(num_anchors, num_anchors - 1)
            pick = torch.randint(0, candidates.shape[1], (num_anchors * k,))
            row = torch.arange(num_anchors).repeat_interleave(k)
            p = candidates[row.to(device), pick.to(device)]
            a = anchors[row.to(device)]
        if weights_BR is not None:
            w = weights_BR[:, neg_R][a]
            nonzero = torch.where(w.sum(dim=1) > 0)[0]
            if len(nonzero) == 0:
                continue
            w, a, p = w[nonzero], a[nonzero], p[nonzero]
            if w.dtype in (torch.float16, torch.bfloat16):
                w = w.float()
            n_pick = torch.multinomial(w, 1, replacement=True).flatten()
        else:
            n_pick = torch.randint(0, len(neg_R), (len(a),))
        parts_a.append(a)
        parts_p.append(p)
        parts_n.append(neg_R[n_pick.to(device)])
    if not parts_a:
        empty = torch.tensor([], dtype=torch.long, device=device)
        return empty, empty.clone(), empty.clone()
    return tuple(torch.cat(x).to(device=device, dtype=torch.long) for x in (parts_a, parts_p, parts_n))


def pair_masks(indices_tuple: tuple[torch.Tensor, ...], num_query: int, num_ref: int, dtype: torch.dtype,
               device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense 0/1 masks (B x R) of the positive and negative pairs in a (a1, p, a2, n) tuple."""
    a1, p, a2, n = indices_tuple
    pos_BR = torch.zeros(num_query, num_ref, dtype=dtype, device=device)
    neg_BR = torch.zeros(num_query, num_ref, dtype=dtype, device=device)
    pos_BR[a1, p] = 1
    neg_BR[a2, n] = 1
    if torch.any((pos_BR != 0) & (neg_BR != 0)):
        raise ValueError("indices_tuple marks some pairs as both positive and negative")
    return pos_BR, neg_BR


def anchor_weights(indices_tuple: tuple[torch.Tensor, ...] | None, num_query: int, dtype: torch.dtype,
                   device: torch.device | str | None, using_ref: bool = False) -> torch.Tensor:
    """Weight per query row: how often it appears in indices_tuple, divided by the largest count (1 if none)."""
    weights_B = torch.zeros(num_query, dtype=dtype, device=device)
    if indices_tuple is None or all(len(x) == 0 for x in indices_tuple):
        return weights_B + 1
    if using_ref:
        idx = indices_tuple[0] if len(indices_tuple) == 3 else torch.cat([indices_tuple[0], indices_tuple[2]])
    else:
        idx = torch.cat(list(indices_tuple))
    idx, counts = torch.unique(idx, return_counts=True)
    weights_B[idx] = counts.to(dtype) / counts.max()
    return weights_B


def tuple_to_reference_rows(
    indices_tuple: tuple[torch.Tensor, ...], ref_row_B: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Map a tuple over the query batch to (queries, references): the positives and negatives (batch
    rows) become the reference rows `ref_row_B` says hold those samples (a rank's global rows, or the
    memory slots a batch was written to); anchors stay query rows."""
    if len(indices_tuple) not in (3, 4):
        raise ValueError(f"indices_tuple must have 3 or 4 entries, got {len(indices_tuple)}")
    ref_positions = (1, 2) if len(indices_tuple) == 3 else (1, 3)
    return tuple(ref_row_B[idx] if i in ref_positions else idx for i, idx in enumerate(indices_tuple))
