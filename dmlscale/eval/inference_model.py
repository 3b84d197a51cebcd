"""PML's InferenceModel and MatchFinder (pytorch_metric_learning.utils.inference): embed inputs with a trained
trunk (+ embedder), index references in a kNN function, find the nearest neighbours of queries, and decide
whether pairs match by a distance threshold.

Legend: N inputs, M references, D embedding size, k neighbours.

Defaults as PML: MatchFinder(CosineSimilarity(), threshold=0.9), normalised embeddings, knn_func
FaissKNN(reset_before=False, reset_after=False) (an ImportError naming faiss when it is missing: pass
knn_func=CustomKNN(...) instead, whose train / add keep the reference rows), data on CUDA when available.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.eval.knn import FaissKNN

Inputs = torch.Tensor | list | torch.utils.data.Dataset


class MatchFinder:
    """Pairs whose distance is at most `threshold` (a similarity: at least) match."""

    def __init__(self, distance: BaseDistance, threshold: float | None = None) -> None:
        self.distance = distance
        self.threshold = threshold

    def _pick(self, threshold: float | None) -> float:
        threshold = self.threshold if threshold is None else threshold
        if threshold is None:
            raise ValueError("MatchFinder: no threshold; pass one here or to the constructor")
        return threshold

    def _close(self, values: torch.Tensor, threshold: float) -> torch.Tensor:
        return values >= threshold if self.distance.is_inverted else values <= threshold

    def get_matching_pairs(self, query_emb: torch.Tensor, ref_emb: torch.Tensor | None = None,
                           threshold: float | None = None, return_tuples: bool = False) -> np.ndarray | list:
        """The N x M boolean match matrix (numpy), or with return_tuples the (query, reference) index pairs."""
        with torch.no_grad():
            ref_emb = query_emb if ref_emb is None else ref_emb
            matches_NM = self._close(self.distance(query_emb, ref_emb), self._pick(threshold)).cpu().numpy()
        return list(zip(*np.where(matches_NM))) if return_tuples else matches_NM

    def is_match(self, x: torch.Tensor, y: torch.Tensor, threshold: float | None = None) -> bool | np.ndarray:
        """Whether row i of x matches row i of y (a bool for one pair)."""
        with torch.no_grad():
            matches = self._close(self.distance.pairwise_distance(x, y), self._pick(threshold))
        return matches.item() if matches.numel() == 1 else matches.cpu().numpy()


class InferenceModel:
    """PML's InferenceModel(trunk, embedder=None, match_finder=None, normalize_embeddings=True, knn_func=None,
    data_device=None, dtype=None)."""

    def __init__(self, trunk: torch.nn.Module, embedder: torch.nn.Module | None = None,
                 match_finder: MatchFinder | None = None, normalize_embeddings: bool = True,
                 knn_func: Any = None, data_device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        if not callable(trunk):
            raise ValueError(f"InferenceModel: trunk must be a module, got {trunk!r}")
        self.trunk = trunk
        self.embedder = torch.nn.Identity() if embedder is None else embedder
        self.match_finder = MatchFinder(CosineSimilarity(), threshold=0.9) if match_finder is None else match_finder
        self.knn_func = FaissKNN(reset_before=False, reset_after=False) if knn_func is None else knn_func
        self.normalize_embeddings = normalize_embeddings
        if data_device is None:
            data_device = "cuda" if torch.cuda.is_available() else "cpu"
        self.data_device = torch.device(data_device)
        self.dtype = dtype

    @staticmethod
    def process_if_list(x: Any) -> Any:
        """A list of tensors is stacked into one batch, as in PML."""
        if isinstance(x, list) and all(isinstance(item, torch.Tensor) for item in x):
            return torch.stack(x)
        return x

    def get_embeddings(self, x: torch.Tensor | list) -> torch.Tensor:
        """embedder(trunk(x)) in eval mode without gradients, L2-normalised when normalize_embeddings."""
        x = self.process_if_list(x)
        if isinstance(x, torch.Tensor):
            x = x.to(device=self.data_device, dtype=self.dtype if x.is_floating_point() else None)
        self.trunk.eval()
        self.embedder.eval()
        with torch.no_grad():
            emb_ND = self.embedder(self.trunk(x))
        return F.normalize(emb_ND, p=2, dim=1) if self.normalize_embeddings else emb_ND

    def get_embeddings_from_tensor_or_dataset(self, inputs: Inputs, batch_size: int) -> torch.Tensor:
        """Embeddings of a tensor (or list) in slices of batch_size, or of a dataset of (input, label) items."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"InferenceModel: batch_size must be a positive int, got {batch_size!r}")
        inputs = self.process_if_list(inputs)
        if isinstance(inputs, (torch.Tensor, list)):
            chunks = [self.get_embeddings(inputs[s:s + batch_size]) for s in range(0, len(inputs), batch_size)]
        elif isinstance(inputs, torch.utils.data.Dataset):
            loader = torch.utils.data.DataLoader(inputs, batch_size=batch_size)
            chunks = [self.get_embeddings(batch) for batch, _ in loader]
        else:
            raise ValueError(f"InferenceModel: inputs must be a tensor, a list of tensors or a Dataset, got "
                             f"{type(inputs).__name__}")
        return torch.cat(chunks)

    def train_knn(self, inputs: Inputs, batch_size: int = 64) -> None:
        """A new kNN index of these references."""
        self.knn_func.train(self.get_embeddings_from_tensor_or_dataset(inputs, batch_size))

    def add_to_knn(self, inputs: Inputs, batch_size: int = 64) -> None:
        """Add references to the kNN index."""
        self.knn_func.add(self.get_embeddings_from_tensor_or_dataset(inputs, batch_size))

    def get_nearest_neighbors(self, query: torch.Tensor | list, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances_Nk, indices_Nk) of the k nearest indexed references of each query."""
        return self.knn_func(self.get_embeddings(query), k)

    def get_matches(self, query: torch.Tensor | list, ref: torch.Tensor | list | None = None,
                    threshold: float | None = None, return_tuples: bool = False) -> np.ndarray | list:
        """The match matrix of queries x references (the queries themselves when ref is None)."""
        query_emb = self.get_embeddings(query)
        ref_emb = query_emb if ref is None else self.get_embeddings(ref)
        return self.match_finder.get_matching_pairs(query_emb, ref_emb, threshold, return_tuples)

    def is_match(self, x: torch.Tensor | list, y: torch.Tensor | list,
                 threshold: float | None = None) -> bool | np.ndarray:
        """Whether each pair (x_i, y_i) matches."""
        return self.match_finder.is_match(self.get_embeddings(x), self.get_embeddings(y), threshold)

    def save_knn_func(self, filename: str) -> None:
        self.knn_func.save(filename)

    def load_knn_func(self, filename: str) -> None:
        self.knn_func.load(filename)
