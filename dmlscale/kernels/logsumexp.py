"""Masked log-sum-exp, the reduction shared by MultiSimilarity, Circle, SupCon and the tiled kernels,
and the exact log(1 + e^x) it and the smooth-margin losses use.

Legend: x_BR values, keep_BR boolean mask of the entries that count, lse_B one result per row.

Semantics (PML's `logsumexp`): entries outside `keep` contribute nothing; `add_one` adds a constant
exp(0) = 1 term inside the log (log(1 + sum exp x), the soft hinge of MultiSimilarity); a row with
no kept entry gives exactly 0 and sends no gradient. The `+1` is folded in with `logaddexp` rather
than by concatenating a zero column, so no B x (R+1) copy is made and the result composes with an
online (streamed) log-sum-exp: lse(a U b) = logaddexp(lse(a), lse(b)).
"""

from __future__ import annotations

import torch


def log_one_plus_exp(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) for every x: softplus without F.softplus's linear cut-off above x = 20."""
    return torch.logaddexp(x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_logsumexp(
    x_BR: torch.Tensor,
    keep_BR: torch.Tensor | None = None,
    *,
    add_one: bool = True,
    dim: int = 1,
    keepdim: bool = False,
) -> torch.Tensor:
    """lse = log([1 +] sum_{r: keep[r]} exp(x_r)) along `dim`; 0 for a row where nothing is kept."""
    if keep_BR is not None:
        if keep_BR.dtype != torch.bool:
            raise ValueError(f"keep mask must be a bool tensor, got dtype {keep_BR.dtype}")
        if keep_BR.shape != x_BR.shape:
            raise ValueError(f"keep mask shape {tuple(keep_BR.shape)} differs from values {tuple(x_BR.shape)}")
        # the most negative finite number, not -inf: an all-masked row must stay finite before masking
        x_BR = x_BR.masked_fill(~keep_BR, torch.finfo(x_BR.dtype).min)
    lse_B = torch.logsumexp(x_BR, dim=dim, keepdim=keepdim)
    if add_one:
        lse_B = log_one_plus_exp(lse_B)
    if keep_BR is not None:
        lse_B = lse_B.masked_fill(~keep_BR.any(dim=dim, keepdim=keepdim), 0)
    return lse_B
