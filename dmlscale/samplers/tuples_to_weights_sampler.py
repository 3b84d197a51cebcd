"""TuplesToWeightsSampler: PML's sampler that embeds the dataset (or a random subset of it) with the model,
mines it with the miner, weighs each sample by how often it appears in the mined tuples (over the largest
count; every sample of the subset 1 when nothing is mined, samples outside it 0) and draws len(self) indices
with replacement in proportion to those weights. It recomputes everything on each iteration.

Legend: N dataset size, S subset size, D embedding size.

Embedding, as PML's BaseTester.get_all_embeddings: model.eval(), no gradients, batches of `batch_size` from an
unshuffled DataLoader, items split by `data_and_label_getter` (default: (input, label) pairs), embeddings
L2-normalised when `normalize_embeddings`. Of PML's tester options these are taken: normalize_embeddings,
batch_size, dataloader_num_workers, data_device, dtype, data_and_label_getter; others raise a ValueError.

Randomness, of the sampler's own (seed=None: seeded from torch's global generator): the subset is drawn by a
numpy RandomState(seed) making PML's call (so the subset is PML's after numpy.random.seed(seed)); the indices
by torch.multinomial with a torch.Generator seeded with seed, which is torch's WeightedRandomSampler with that
generator (PML's uses torch's global generator, which its DataLoader also advances).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from dmlscale.indices import anchor_weights
from dmlscale.samplers.checks import check_int

OWNER = "TuplesToWeightsSampler"
TESTER_OPTIONS = ("normalize_embeddings", "batch_size", "dataloader_num_workers", "data_device", "dtype",
                  "data_and_label_getter")


def _input_and_label(batch: Any) -> tuple[Any, Any]:
    return batch[0], batch[1]


class TuplesToWeightsSampler(Sampler[int]):
    """PML's TuplesToWeightsSampler(model, miner, dataset, subset_size=None, **tester_kwargs)."""

    def __init__(self, model: torch.nn.Module, miner: Callable[..., tuple], dataset: Dataset,
                 subset_size: int | None = None, *, seed: int | None = None, **tester_kwargs: Any) -> None:
        unknown = sorted(set(tester_kwargs) - set(TESTER_OPTIONS))
        if unknown:
            raise ValueError(f"{OWNER}: tester options {unknown} are not supported; allowed: {list(TESTER_OPTIONS)}")
        if not callable(model) or not callable(miner):
            raise ValueError(f"{OWNER}: model and miner must be callable, got {model!r} and {miner!r}")
        self.model, self.miner, self.dataset = model, miner, dataset
        self.subset_size = None if not subset_size else check_int(OWNER, "subset_size", subset_size, minimum=1)
        self.normalize_embeddings = bool(tester_kwargs.get("normalize_embeddings", True))
        self.batch_size = check_int(OWNER, "batch_size", tester_kwargs.get("batch_size", 32), minimum=1)
        self.num_workers = check_int(OWNER, "dataloader_num_workers", tester_kwargs.get("dataloader_num_workers", 2),
                                     minimum=0)
        device = tester_kwargs.get("data_device")
        self.device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = tester_kwargs.get("dtype")
        self.data_and_label_getter = tester_kwargs.get("data_and_label_getter") or _input_and_label
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item()) % 2**32
        self.seed = check_int(OWNER, "seed", seed, minimum=0)
        self.numpy_rng = np.random.RandomState(self.seed)
        self.torch_rng = torch.Generator().manual_seed(self.seed)
        self.weights: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.subset_size if self.subset_size else len(self.dataset)

    def embed(self, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings_SD, labels_S) of every item, in order."""
        self.model.eval()
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
        chunks, label_chunks = [], []
        with torch.no_grad():
            for batch in loader:
                inputs, labels = self.data_and_label_getter(batch)
                inputs = inputs.to(device=self.device, dtype=self.dtype if inputs.is_floating_point() else None)
                chunks.append(self.model(inputs))
                label_chunks.append(torch.as_tensor(labels).to(self.device).reshape(len(inputs), -1))
        emb_SD, labels_S1 = torch.cat(chunks), torch.cat(label_chunks)
        if labels_S1.shape[1] != 1:
            raise ValueError(f"{OWNER}: each item needs one label, got labels of shape {tuple(labels_S1.shape)}")
        return (F.normalize(emb_SD) if self.normalize_embeddings else emb_SD), labels_S1[:, 0]

    def __iter__(self) -> Iterator[int]:
        if self.subset_size:
            num_items = len(self.dataset)
            indices_S = self.numpy_rng.choice(np.arange(num_items), size=self.subset_size,
                                              replace=num_items < self.subset_size)
            emb_SD, labels_S = self.embed(Subset(self.dataset, indices_S.tolist()))
            indices_S = torch.as_tensor(indices_S, device=self.device)
        else:
            emb_SD, labels_S = self.embed(self.dataset)
            indices_S = torch.arange(len(self.dataset), device=self.device)
        tuples = self.miner(emb_SD, labels_S)
        self.weights = torch.zeros(len(self.dataset), device=self.device)
        self.weights[indices_S] = anchor_weights(tuples, len(labels_S), torch.float32, self.device)
        drawn = torch.multinomial(self.weights.cpu().double(), len(self), replacement=True, generator=self.torch_rng)
        return iter(drawn.tolist())
