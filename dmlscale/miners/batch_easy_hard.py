"""Batch easy/hard mining: for every anchor, one positive and one negative picked by strategy.

Legend: B query rows, R reference rows; mat_BR distances (or similarities), *_B one value per anchor.

Strategies (for a distance; mirrored for a similarity):
  positive  hard / semihard: farthest positive      easy: closest positive
  negative  hard / semihard: closest negative       easy: farthest negative
  "all" keeps every pair of that kind. "semihard" restricts the candidates by the other side's pick:
  a semihard negative must be farther than the chosen positive, a semihard positive closer than the
  chosen negative. `allowed_pos_range` / `allowed_neg_range` = (low, high) drop candidates outside it.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.indices import implicit_self_index, matches_and_diffs
from dmlscale.miners.base import BaseMiner
from dmlscale.param_checks import check_real_range

HARD, SEMIHARD, EASY, ALL = "hard", "semihard", "easy", "all"
STRATEGIES = (HARD, SEMIHARD, EASY, ALL)
_EXTREME_STATS = [
    "easiest_triplet", "hardest_triplet", "easiest_pos_pair", "hardest_pos_pair", "easiest_neg_pair", "hardest_neg_pair",
]


class BatchEasyHardMiner(BaseMiner):
    """Pick one positive and/or one negative per anchor (PML defaults: easy positive, semihard negative).

    Returns pairs (a1, p, a2, n); anchors with no admissible candidate are dropped, and when neither
    strategy is "all" an anchor is kept only if both picks exist (then a1 == a2).
    """

    HARD, SEMIHARD, EASY, ALL = HARD, SEMIHARD, EASY, ALL
    all_batch_mining_strategies = list(STRATEGIES)

    def __init__(self, pos_strategy: str = EASY, neg_strategy: str = SEMIHARD,
                 allowed_pos_range: tuple[float, float] | None = None,
                 allowed_neg_range: tuple[float, float] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, value in (("pos_strategy", pos_strategy), ("neg_strategy", neg_strategy)):
            if value not in STRATEGIES:
                raise ValueError(f"{name} must be one of {STRATEGIES}, got {value!r}")
        if pos_strategy == neg_strategy == SEMIHARD:
            raise ValueError("pos_strategy and neg_strategy cannot both be 'semihard'")
        if {pos_strategy, neg_strategy} == {SEMIHARD, ALL}:
            raise ValueError(
                f"'semihard' needs a single pick on the other side, so it cannot pair with 'all' "
                f"(got pos_strategy={pos_strategy!r}, neg_strategy={neg_strategy!r})"
            )
        check_real_range(type(self).__name__, "allowed_pos_range", allowed_pos_range)
        check_real_range(type(self).__name__, "allowed_neg_range", allowed_neg_range)
        self.pos_strategy = pos_strategy
        self.neg_strategy = neg_strategy
        self.allowed_pos_range = allowed_pos_range
        self.allowed_neg_range = allowed_neg_range
        self.add_to_recordable_attributes(list_of_names=_EXTREME_STATS, is_stat=True)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor, ref_labels: torch.Tensor,
             query_ref_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        query_ref_index = implicit_self_index(labels, ref_labels, query_ref_index)
        mat_BR = self.distance(embeddings, ref_emb)
        same_BR, diff_BR = matches_and_diffs(labels, ref_labels, query_ref_index)
        pos, neg = self.pos_strategy, self.neg_strategy
        # (values_B, index_B, keep_B) per side; semihard waits for the other side's pick.
        if pos == SEMIHARD:
            neg_pick = self.pick(mat_BR, diff_BR, farthest=neg == EASY, allowed=self.allowed_neg_range)
            pos_pick = self.pick(mat_BR, same_BR, farthest=True, allowed=self.allowed_pos_range, bound_B=neg_pick[0])
        else:
            pos_pick = None if pos == ALL else self.pick(
                mat_BR, same_BR, farthest=pos == HARD, allowed=self.allowed_pos_range)
            bound_B = pos_pick[0] if neg == SEMIHARD else None
            neg_pick = None if neg == ALL else self.pick(
                mat_BR, diff_BR, farthest=neg == EASY, allowed=self.allowed_neg_range, bound_B=bound_B)

        keep_B = pos_pick[2] & neg_pick[2] if pos_pick is not None and neg_pick is not None else None
        a1, p, pos_dist = self.pairs_of(pos_pick, same_BR, mat_BR, keep_B)
        a2, n, neg_dist = self.pairs_of(neg_pick, diff_BR, mat_BR, keep_B)
        self.record_extremes(pos_dist, neg_dist)
        return a1, p, a2, n

    @staticmethod
    def pairs_of(pick: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, candidates_BR: torch.Tensor,
                 mat_BR: torch.Tensor,
                 keep_B: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(anchor, other, value) of one side: every candidate pair ("all"), or the kept per-row picks."""
        if pick is None:
            a, other = torch.where(candidates_BR)
            return a, other, mat_BR[a, other]
        value_B, index_B, has_B = pick
        keep_B = has_B if keep_B is None else keep_B
        anchors_B = torch.arange(mat_BR.shape[0], device=mat_BR.device)
        return anchors_B[keep_B], index_B[keep_B], value_B[keep_B]

    def pick(self, mat_BR: torch.Tensor, candidates_BR: torch.Tensor, *, farthest: bool,
             allowed: tuple[float, float] | None = None,
             bound_B: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per row, the farthest (or closest) admissible candidate: (value_B, index_B, has_one_B).

        `bound_B` (semihard) keeps only candidates strictly closer than it when picking the farthest,
        strictly farther when picking the closest.
        """
        take_max = farthest != self.distance.is_inverted
        ok_BR = candidates_BR.clone()
        if bound_B is not None:
            beyond_BR = mat_BR >= bound_B[:, None] if take_max else mat_BR <= bound_B[:, None]
            ok_BR &= ~beyond_BR
        if allowed is not None:
            ok_BR &= ~((mat_BR > allowed[1]) | (mat_BR < allowed[0]))
        fill = float("-inf") if take_max else float("inf")
        masked_BR = mat_BR.masked_fill(~ok_BR, fill)
        value_B, index_B = masked_BR.max(dim=1) if take_max else masked_BR.min(dim=1)
        return value_B, index_B, ok_BR.any(dim=1)

    def record_extremes(self, pos_dist: torch.Tensor, neg_dist: torch.Tensor) -> None:
        if not self.collect_stats:
            return
        # "closest" is min for a distance, max for a similarity
        closest = torch.max if self.distance.is_inverted else torch.min
        farthest = torch.min if self.distance.is_inverted else torch.max
        stats = {}
        if len(pos_dist) > 0 and len(neg_dist) > 0 and ALL not in (self.pos_strategy, self.neg_strategy):
            gap = pos_dist - neg_dist
            stats.update(easiest_triplet=closest(gap).item(), hardest_triplet=farthest(gap).item())
        if len(pos_dist) > 0:
            stats.update(easiest_pos_pair=closest(pos_dist).item(), hardest_pos_pair=farthest(pos_dist).item())
        if len(neg_dist) > 0:
            stats.update(easiest_neg_pair=farthest(neg_dist).item(), hardest_neg_pair=closest(neg_dist).item())
        self.set_stats(stats)
