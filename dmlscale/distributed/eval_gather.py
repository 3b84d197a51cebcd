"""Collectives for evaluation: agree on errors, gather features without grad, score once, share the result.

Each function takes the process group explicitly (None: the default group) and is the identity in a
single process. Nothing here carries gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

from dmlscale.distributed.collectives import all_gather_no_grad, gather_sizes, world_rank_and_size

T = TypeVar("T")


def raise_if_any_rank_failed(error: str | None, group: dist.ProcessGroup | None = None, *, agree: dict | None = None) -> None:
    """Every rank passes its own input error (None: fine) and the settings all ranks must share
    (`agree`, e.g. {"reference given": True}); on any error or disagreement every rank raises the
    same ValueError naming the ranks, so no rank is left waiting in a later collective."""
    _, world_size = world_rank_and_size(group)
    reports = [(error, agree)]
    if world_size > 1:
        reports = [None] * world_size
        dist.all_gather_object(reports, (error, agree), group=group)
    failed = [f"rank {rank}: {message}" for rank, (message, _) in enumerate(reports) if message is not None]
    if any(other != reports[0][1] for _, other in reports):
        failed.append("ranks disagree on " + ", ".join(f"rank {rank}: {other}" for rank, (_, other) in enumerate(reports)))
    if failed:
        raise ValueError("; ".join(failed))


def gather_rows(local_n: torch.Tensor, group: dist.ProcessGroup | None = None, *, name: str) -> tuple[torch.Tensor, list[int]]:
    """(all ranks' rows in rank order, every rank's row count); no gradient flows."""
    sizes = gather_sizes(local_n, group, name=name)
    return all_gather_no_grad(local_n.detach(), group, name=name, sizes=sizes), sizes


def score_on_rank0(score: Callable[[], T], group: dist.ProcessGroup | None = None) -> T:
    """Run score() on rank 0 only and broadcast its (picklable) result to every rank.

    The broadcast is the barrier: the other ranks wait for rank 0. If score() raises on rank 0, every
    rank raises an exception of the same kind (ValueError stays ValueError) with rank 0's message.
    """
    rank, world_size = world_rank_and_size(group)
    if world_size == 1:
        return score()
    outcome = [None]
    if rank == 0:
        try:
            outcome = [("ok", score())]
        except Exception as error:  # shared with the other ranks below, then re-raised on rank 0 too
            outcome = [("error", (isinstance(error, ValueError), f"{type(error).__name__} on rank 0: {error}"))]
            failure = error
    dist.broadcast_object_list(outcome, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    status, payload = outcome[0]
    if status == "ok":
        return payload
    if rank == 0:
        raise failure
    is_value_error, message = payload
    raise (ValueError if is_value_error else RuntimeError)(message)
