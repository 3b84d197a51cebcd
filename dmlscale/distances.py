"""Distances and similarities between embeddings, drop-in compatible with pytorch-metric-learning.

Legend: q_QD query embeddings, r_RD reference embeddings, mat_QR the Q x R matrix.

Contract (as PML): `forward(query, ref=None)` optionally L_p-normalises both sides, calls
`compute_mat`, then raises the matrix to `power`. `is_inverted=True` marks a similarity (larger is
closer); `margin`, `smallest_dist` and `largest_dist` let losses be written once for both kinds.
`ModuleWithDistance` is the common base of losses and miners: it holds a distance with a per-class default.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dmlscale.inputs import check_embeddings
from dmlscale.records import ModuleWithRecords

_NORM_STATS = [
    "initial_avg_query_norm",
    "initial_avg_ref_norm",
    "final_avg_query_norm",
    "final_avg_ref_norm",
]


class BaseDistance(ModuleWithRecords):
    """Base class: subclasses implement `compute_mat` and `pairwise_distance`."""

    def __init__(
        self,
        collect_stats: bool | None = None,
        normalize_embeddings: bool = True,
        p: float = 2,
        power: float = 1,
        is_inverted: bool = False,
    ) -> None:
        super().__init__(collect_stats=collect_stats)
        if not isinstance(p, (int, float)) or p <= 0:
            raise ValueError(f"p must be a positive number, got {p!r}")
        if not isinstance(power, (int, float)) or power <= 0:
            raise ValueError(f"power must be a positive number, got {power!r}")
        self.normalize_embeddings = normalize_embeddings
        self.p = p
        self.power = power
        self.is_inverted = is_inverted
        self.add_to_recordable_attributes(list_of_names=_NORM_STATS, is_stat=True)

    def forward(self, query_emb: torch.Tensor, ref_emb: torch.Tensor | None = None) -> torch.Tensor:
        self.reset_stats()
        self.check_shapes(query_emb, ref_emb)
        query_normed = self.maybe_normalize(query_emb)
        if ref_emb is None:
            ref_emb, ref_normed = query_emb, query_normed
        else:
            ref_normed = self.maybe_normalize(ref_emb)
        self.set_default_stats(query_emb, ref_emb, query_normed, ref_normed)
        mat_QR = self.compute_mat(query_normed, ref_normed)
        if self.power != 1:
            mat_QR = mat_QR**self.power
        return mat_QR

    def compute_mat(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pairwise_distance(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        """Distance between aligned rows: query_emb[i] vs ref_emb[i] (no normalisation, no power)."""
        raise NotImplementedError

    def check_shapes(self, query_emb: torch.Tensor, ref_emb: torch.Tensor | None) -> None:
        check_embeddings("query embeddings", query_emb)
        if ref_emb is not None:
            check_embeddings("reference embeddings", ref_emb)
            if ref_emb.shape[1] != query_emb.shape[1]:
                raise ValueError(
                    f"query and reference embedding sizes differ: {query_emb.shape[1]} vs {ref_emb.shape[1]}"
                )

    def normalize(self, embeddings: torch.Tensor, dim: int = 1, **kwargs: float | torch.Tensor | None) -> torch.Tensor:
        return F.normalize(embeddings, p=self.p, dim=dim, **kwargs)

    def maybe_normalize(self, embeddings: torch.Tensor, dim: int = 1,
                        **kwargs: float | torch.Tensor | None) -> torch.Tensor:
        return self.normalize(embeddings, dim=dim, **kwargs) if self.normalize_embeddings else embeddings

    def get_norm(self, embeddings: torch.Tensor, dim: int = 1,
                 **kwargs: bool | torch.dtype | torch.Tensor | None) -> torch.Tensor:
        return torch.linalg.vector_norm(embeddings, ord=self.p, dim=dim, **kwargs)

    def set_default_stats(self, query_emb: torch.Tensor, ref_emb: torch.Tensor, query_normed: torch.Tensor,
                          ref_normed: torch.Tensor) -> None:
        if not self.collect_stats:
            return
        with torch.no_grad():
            self.set_stats(
                {
                    "initial_avg_query_norm": self.get_norm(query_emb).mean().item(),
                    "initial_avg_ref_norm": self.get_norm(ref_emb).mean().item(),
                    "final_avg_query_norm": self.get_norm(query_normed).mean().item(),
                    "final_avg_ref_norm": self.get_norm(ref_normed).mean().item(),
                }
            )

    def smallest_dist(self, *args: torch.Tensor | int, **kwargs: int | bool) -> Any:
        """The 'closest' value: min for distances, max for similarities. Returns what torch.max/torch.min
        return for these arguments: a tensor, or (values, indices) when reducing over `dim`."""
        return torch.max(*args, **kwargs) if self.is_inverted else torch.min(*args, **kwargs)

    def largest_dist(self, *args: torch.Tensor | int, **kwargs: int | bool) -> Any:
        """The 'farthest' value: max for distances, min for similarities."""
        return torch.min(*args, **kwargs) if self.is_inverted else torch.max(*args, **kwargs)

    def margin(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """How much farther x is than y: x - y for distances, y - x for similarities."""
        return y - x if self.is_inverted else x - y

    def extra_repr(self) -> str:
        return (
            f"normalize_embeddings={self.normalize_embeddings}, p={self.p}, power={self.power}, "
            f"is_inverted={self.is_inverted}"
        )


class LpDistance(BaseDistance):
    """d(q, r) = ||q - r||_p (after optional L_p normalisation)."""

    def __init__(self, **kwargs: bool | float) -> None:
        super().__init__(**kwargs)
        if self.is_inverted:
            raise ValueError("LpDistance is a distance: is_inverted must be False")

    def compute_mat(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        if query_emb.dtype in (torch.float16, torch.bfloat16) and query_emb.device.type == "cpu":
            return torch.cdist(query_emb.float(), ref_emb.float(), p=self.p).to(query_emb.dtype)
        return torch.cdist(query_emb, ref_emb, p=self.p)

    def pairwise_distance(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        return F.pairwise_distance(query_emb, ref_emb, p=self.p)


class DotProductSimilarity(BaseDistance):
    """s(q, r) = q . r. With the default normalize_embeddings=True this is the cosine similarity."""

    def __init__(self, **kwargs: bool | float) -> None:
        if kwargs.get("is_inverted", True) is not True:
            raise ValueError("DotProductSimilarity is a similarity: is_inverted must be True")
        kwargs["is_inverted"] = True
        super().__init__(**kwargs)

    def compute_mat(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        return query_emb @ ref_emb.t()

    def pairwise_distance(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        return (query_emb * ref_emb).sum(dim=1)


class CosineSimilarity(DotProductSimilarity):
    """s(q, r) = q . r / (||q|| ||r||): a dot product of normalised embeddings."""

    def __init__(self, **kwargs: bool | float) -> None:
        if kwargs.get("normalize_embeddings", True) is not True:
            raise ValueError("CosineSimilarity requires normalize_embeddings=True")
        super().__init__(**kwargs)


class SNRDistance(BaseDistance):
    """Signal-to-noise distance d(q, r) = var(q - r) / var(q) (unbiased variances over features).

    Vectorised without the Q x R x D difference tensor:
    var(q - r) = (|q_c|^2 + |r_c|^2 - 2 q_c . r_c) / (D - 1), with x_c = x - mean(x).
    """

    def __init__(self, **kwargs: bool | float) -> None:
        super().__init__(**kwargs)
        if self.is_inverted:
            raise ValueError("SNRDistance is a distance: is_inverted must be False")

    def compute_mat(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        num_features = query_emb.shape[1]
        if num_features < 2:
            raise ValueError(f"SNRDistance needs embedding_size >= 2, got {num_features}")
        q_QD = query_emb - query_emb.mean(dim=1, keepdim=True)
        r_RD = ref_emb - ref_emb.mean(dim=1, keepdim=True)
        sq_q_Q = (q_QD * q_QD).sum(dim=1)
        sq_r_R = (r_RD * r_RD).sum(dim=1)
        diff_var_QR = (sq_q_Q[:, None] + sq_r_R[None, :] - 2 * (q_QD @ r_RD.t())).clamp(min=0)
        return diff_var_QR / sq_q_Q[:, None]

    def pairwise_distance(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        return torch.var(query_emb - ref_emb, dim=1) / torch.var(query_emb, dim=1)


class ModuleWithDistance(ModuleWithRecords):
    """Holds a distance (a default one per subclass) and checks the type a subclass requires.

    The common base of losses and miners, kept here (not in losses/) so miners need not import losses.
    """

    def __init__(self, distance: BaseDistance | None = None, collect_stats: bool | None = None) -> None:
        super().__init__(collect_stats=collect_stats)
        if distance is not None and not isinstance(distance, BaseDistance):
            raise ValueError(f"distance must be a dmlscale.distances.BaseDistance, got {type(distance).__name__}")
        self.distance = self.get_default_distance() if distance is None else distance

    def get_default_distance(self) -> BaseDistance:
        return LpDistance(p=2)

    def require_distance(self, allowed: type | tuple[type, ...], **settings: object) -> None:
        """Raise a ValueError naming the distance when it is not of the allowed type/settings."""
        allowed_types = allowed if isinstance(allowed, tuple) else (allowed,)
        names = " or ".join(t.__name__ for t in allowed_types)
        if not isinstance(self.distance, allowed_types):
            raise ValueError(f"{type(self).__name__} requires distance {names}, got {type(self.distance).__name__}")
        for key, value in settings.items():
            if getattr(self.distance, key) != value:
                raise ValueError(
                    f"{type(self).__name__} requires {names}({key}={value!r}), got {key}={getattr(self.distance, key)!r}"
                )


class BatchedDistance(torch.nn.Module):
    """Streams a distance matrix in query chunks, so a Q x R matrix is never held whole (as PML).

    `forward(query, ref=None)` calls `distance(query[s:e], ref)` for s = 0, batch_size, ... and hands
    each chunk's matrix to `iter_fn(mat, s, e)`; it returns None (e may pass Q on the last chunk, as
    in PML). Attributes it lacks (is_inverted, margin, ...) come from the wrapped distance.
    """

    def __init__(self, distance: BaseDistance, iter_fn: Any = None, batch_size: int = 32) -> None:
        super().__init__()
        if not callable(distance):
            raise ValueError(f"distance must be callable (a BaseDistance), got {type(distance).__name__}")
        if iter_fn is not None and not callable(iter_fn):
            raise ValueError(f"iter_fn must be callable as iter_fn(mat, s, e) or None, got {type(iter_fn).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.distance = distance
        self.iter_fn = iter_fn
        self.batch_size = batch_size

    def forward(self, query_emb: torch.Tensor, ref_emb: torch.Tensor | None = None) -> None:
        if self.iter_fn is None:
            raise ValueError("BatchedDistance.iter_fn is None: set iter_fn(mat, s, e) before calling it")
        ref_emb = query_emb if ref_emb is None else ref_emb
        for start in range(0, query_emb.shape[0], self.batch_size):
            end = start + self.batch_size
            self.iter_fn(self.distance(query_emb[start:end], ref_emb), start, end)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.distance, name)
