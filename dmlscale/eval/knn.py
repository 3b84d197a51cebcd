"""PML's k-nearest-neighbour and k-means helpers (pytorch_metric_learning.utils.inference): CustomKNN, FaissKNN,
FaissKMeans, with PML's call signature `knn(query, k, reference, ref_includes_query)` -> (distances, indices).

Legend: N queries, M references, D embedding size, k neighbours.

ref_includes_query: reference row i is query i. As PML, k + 1 neighbours are searched, then each row drops
its own index; a row whose own index is not among them drops its last neighbour instead. Ties fall as
torch.topk orders them (CustomKNN), the same call PML makes. FaissKNN and FaissKMeans need faiss and raise
an ImportError naming it when it is missing.

One addition to PML's CustomKNN: `train(reference)` / `add(reference)` keep an index of reference rows, used
when it is called without a reference (PML's CustomKNN then compares the queries with themselves, as here
when nothing was added), so InferenceModel's train_knn / add_to_knn work without faiss.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from dmlscale.distances import BaseDistance, BatchedDistance


def drop_self_matches(distances_Nk: torch.Tensor, indices_Nk: torch.Tensor,
                      ref_includes_query: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """PML's return_results: without ref_includes_query unchanged; with it, each row of k + 1 neighbours
    loses its own index (or, when absent, its last column), leaving k."""
    if not ref_includes_query:
        return distances_Nk, indices_Nk
    rows_N = torch.arange(len(indices_Nk), device=indices_Nk.device)
    drop_Nk = indices_Nk == rows_N[:, None]
    drop_Nk[~drop_Nk.any(dim=1), -1] = True
    num_left = indices_Nk.shape[1] - 1
    return distances_Nk[~drop_Nk].view(len(indices_Nk), num_left), indices_Nk[~drop_Nk].view(len(indices_Nk), num_left)


class CustomKNN:
    """PML's CustomKNN(distance, batch_size=None): the k nearest references under any dmlscale distance
    (the largest similarities when `distance.is_inverted`). With batch_size, the matrix is streamed
    through BatchedDistance and, as in PML, the distances come back in torch's default float dtype."""

    def __init__(self, distance: BaseDistance, batch_size: int | None = None) -> None:
        if not callable(distance) or not hasattr(distance, "is_inverted"):
            raise ValueError(f"CustomKNN: distance must be a dmlscale distance, got {distance!r}")
        self.distance = BatchedDistance(distance, batch_size=batch_size) if batch_size else distance
        self.reference: torch.Tensor | None = None

    def __call__(self, query: torch.Tensor, k: int, reference: torch.Tensor | None = None,
                 ref_includes_query: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if reference is None:
            reference = self.reference
        num_ref = len(query) if reference is None else len(reference)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k + int(ref_includes_query) > num_ref:
            raise ValueError(f"CustomKNN: k must be an int in [1, {num_ref - int(ref_includes_query)}] for "
                             f"{num_ref} references{' including the queries' if ref_includes_query else ''}, got {k!r}")
        num_k = k + 1 if ref_includes_query else k
        largest = bool(self.distance.is_inverted)
        if isinstance(self.distance, BatchedDistance):
            distances_Nk = torch.zeros(len(query), num_k, device=query.device)
            indices_Nk = torch.zeros(len(query), num_k, device=query.device, dtype=torch.long)

            def keep_chunk(mat_cM: torch.Tensor, start: int, end: int) -> None:
                distances_Nk[start:end], indices_Nk[start:end] = torch.topk(mat_cM, num_k, largest=largest, dim=1)

            self.distance.iter_fn = keep_chunk
            self.distance(query, reference)
        else:
            distances_Nk, indices_Nk = torch.topk(self.distance(query, reference), num_k, largest=largest, dim=1)
        return drop_self_matches(distances_Nk, indices_Nk, ref_includes_query)

    def train(self, reference: torch.Tensor) -> None:
        """Start a new index holding these reference rows."""
        self.reference = reference.detach()

    def add(self, reference: torch.Tensor) -> None:
        """Append reference rows to the index."""
        self.reference = reference.detach() if self.reference is None else torch.cat([self.reference,
                                                                                      reference.detach()])

    def reset(self) -> None:
        self.reference = None

    def save(self, filename: str) -> None:
        torch.save(self.reference, filename)

    def load(self, filename: str) -> None:
        self.reference = torch.load(filename)


def import_faiss(owner: str) -> Any:
    try:
        import faiss
    except ImportError as error:
        raise ImportError(f"{owner} needs faiss, which is not installed (pip install faiss-cpu or faiss-gpu); "
                          "CustomKNN needs nothing extra") from error
    return faiss


class FaissKNN:
    """PML's FaissKNN(reset_before=True, reset_after=True, index_init_fn=None, gpus=None): exact search in a
    faiss index (default IndexFlatL2, squared L2 distances); train / add / save / load / reset as PML.
    Searches on the CPU index (PML moves it to GPUs when available; `gpus` is kept and checked)."""

    def __init__(self, reset_before: bool = True, reset_after: bool = True,
                 index_init_fn: Callable[[int], Any] | None = None, gpus: list[int] | None = None) -> None:
        self.faiss = import_faiss("FaissKNN")
        if gpus is not None and (not isinstance(gpus, (list, tuple)) or len(gpus) < 1):
            raise ValueError(f"FaissKNN: gpus must be a non-empty list of device ids, got {gpus!r}")
        self.reset_before, self.reset_after, self.gpus = reset_before, reset_after, gpus
        self.index_init_fn = self.faiss.IndexFlatL2 if index_init_fn is None else index_init_fn
        self.index: Any = None

    def __call__(self, query: torch.Tensor, k: int, reference: torch.Tensor | None = None,
                 ref_includes_query: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        num_k = k + 1 if ref_includes_query else k
        if self.reset_before:
            self.index = self.index_init_fn(query.shape[1])
        if self.index is None:
            raise ValueError("FaissKNN: no index; call train(reference) first or use reset_before=True")
        if reference is not None:
            self.index.add(_as_float32(reference))
        distances, indices = self.index.search(_as_float32(query), num_k)
        if self.reset_after:
            self.reset()
        distances_Nk = torch.from_numpy(distances).to(query.device)
        indices_Nk = torch.from_numpy(indices).long().to(query.device)
        return drop_self_matches(distances_Nk, indices_Nk, ref_includes_query)

    def train(self, embeddings: torch.Tensor) -> None:
        self.index = self.index_init_fn(embeddings.shape[1])
        self.add(embeddings)

    def add(self, embeddings: torch.Tensor) -> None:
        self.index.add(_as_float32(embeddings))

    def save(self, filename: str) -> None:
        self.faiss.write_index(self.index, filename)

    def load(self, filename: str) -> None:
        self.index = self.faiss.read_index(filename)

    def reset(self) -> None:
        self.index = None


class FaissKMeans:
    """PML's FaissKMeans(**kwargs): `kmeans(x, num_clusters)` -> the cluster id of each row, from
    faiss.Kmeans(D, num_clusters, **kwargs) trained on x."""

    def __init__(self, **kwargs: Any) -> None:
        self.faiss = import_faiss("FaissKMeans")
        self.kwargs = kwargs

    def __call__(self, x: torch.Tensor, nmb_clusters: int) -> torch.Tensor:
        data = _as_float32(x)
        kmeans = self.faiss.Kmeans(data.shape[1], nmb_clusters, **self.kwargs)
        kmeans.train(data)
        _, nearest = kmeans.index.search(data, 1)
        return torch.from_numpy(nearest[:, 0]).long().to(x.device if torch.is_tensor(x) else "cpu")


def _as_float32(x: torch.Tensor | np.ndarray) -> np.ndarray:
    array = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    return np.ascontiguousarray(array, dtype=np.float32)
