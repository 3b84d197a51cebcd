"""Angular mining (Wang et al. 2017, "Deep Metric Learning with Angular Loss"): triplets with a wide angle at n.

Legend: T triplets; ap_T = ||x_a - x_p||, nc_T = ||x_n - c||, c = (x_a + x_p) / 2 on the raw (not
normalised) embeddings, as in PML; angle_T = atan(ap_T / (2 nc_T)) in radians.

A triplet is kept when angle_T > angle: the negative sits close to the anchor-positive centre
relative to the pair's length, i.e. the angular loss is still active for it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dmlscale.distances import LpDistance
from dmlscale.indices import all_triplets, implicit_self_index
from dmlscale.miners.base import BaseMiner
from dmlscale.param_checks import check_real

_ANGLE_STATS = ["average_angle", "average_angle_above_threshold", "average_angle_below_threshold", "min_angle",
                "max_angle", "std_of_angle"]


class AngularMiner(BaseMiner):
    """Triplets (a, p, n) with angle > `angle` degrees, in (a, p, n) order; needs LpDistance(p=2, power=1,
    normalize_embeddings=True) (PML's requirement). `self.angle` holds the threshold in radians, as PML;
    the statistics are in degrees."""

    def __init__(self, angle: float = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.require_distance(LpDistance, p=2, power=1, normalize_embeddings=True)
        check_real(type(self).__name__, "angle", angle)
        self.angle = math.radians(angle)
        self.add_to_recordable_attributes(list_of_names=["angle"], is_stat=False)
        self.add_to_recordable_attributes(list_of_names=_ANGLE_STATS, is_stat=True)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor, ref_labels: torch.Tensor,
             query_ref_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        query_ref_index = implicit_self_index(labels, ref_labels, query_ref_index)
        a_T, p_T, n_T = all_triplets(labels, ref_labels, query_ref_index)
        anchor_TD, positive_TD, negative_TD = embeddings[a_T], ref_emb[p_T], ref_emb[n_T]
        centre_TD = (anchor_TD + positive_TD) / 2
        ap_T = self.distance.pairwise_distance(anchor_TD, positive_TD)
        nc_T = self.distance.pairwise_distance(negative_TD, centre_TD)
        angle_T = torch.atan(ap_T / (2 * nc_T))
        keep_T = angle_T > self.angle
        self.record_angles(angle_T, keep_T)
        return a_T[keep_T], p_T[keep_T], n_T[keep_T]

    def record_angles(self, angle_T: torch.Tensor, keep_T: torch.Tensor) -> None:
        """Angle statistics in degrees; each is left at 0 when its set of triplets is empty (as PML)."""
        if not self.collect_stats:
            return
        stats = {}
        if len(angle_T) > 0:
            stats.update(average_angle=angle_T.mean(), min_angle=angle_T.min(), max_angle=angle_T.max(),
                         std_of_angle=angle_T.std())
        if bool(keep_T.any()):
            stats["average_angle_above_threshold"] = angle_T[keep_T].mean()
        if not bool(keep_T.all()):
            stats["average_angle_below_threshold"] = angle_T[~keep_T].mean()
        self.set_stats({name: math.degrees(value.item()) for name, value in stats.items()})
