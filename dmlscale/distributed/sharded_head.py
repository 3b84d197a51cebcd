"""What every class-sharded loss shares: the class blocks, the rank-owned parameter, its seeded initial
values, the checks and the gather of the global batch, and the exact merge of per-rank partial sums.

Legend: n local rows, N global rows, D embedding size, C this rank's classes, S entries per class
(sub-centres, centres), K all classes.

Rank r owns the contiguous classes [start_r, end_r) of `class_block` (the first K mod W ranks get one
class more; a rank may own none when K < W) as one ordinary nn.Parameter: D x C*S class columns
(`class_dim=1`, PML's W / fc) or C*S x D rows (`class_dim=0`, PML's proxies), class-major. With
`data_parallel=True` the embeddings' gradient is multiplied by the world size (the convention of
DistributedLoss: a DDP/DeepSpeed average over ranks then restores the exact embedder gradient); the
owned blocks are never averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from dmlscale.distributed.collectives import (all_gather_no_grad, all_gather_with_grad, all_reduce_logsumexp_no_grad,
                                              all_reduce_sum_no_grad, gather_sizes, world_rank_and_size)
from dmlscale.kernels.margin_softmax import merged_logsumexp, sum_with_part_grad
from dmlscale.param_checks import check_positive_int

DEFAULT_CLASS_TILE = 8192
INIT_CHUNK = 4096  # classes per seeded block of the initial weights


def class_block(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, end) of the classes rank `rank` owns: contiguous blocks, the first K mod W one class larger."""
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass(frozen=True)
class OwnedBlock:
    """Where a rank-owned parameter sits in the full one: classes [start, end) of num_classes, along
    dimension `dim`, `per_class` entries per class (sub-centres, centres) laid out class-major."""

    start: int
    end: int
    num_classes: int
    dim: int = 1
    per_class: int = 1

    def narrow(self, tensor: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Classes [start, end) (global numbers within this block) of `tensor`, a value of this block's shape."""
        return tensor.narrow(self.dim, (start - self.start) * self.per_class, (end - start) * self.per_class)

    def of_full(self, full: torch.Tensor) -> torch.Tensor:
        """This block's slice of the full parameter (all num_classes classes)."""
        return full.narrow(self.dim, self.start * self.per_class, (self.end - self.start) * self.per_class)


def seeded_columns(init_seed: int, embedding_size: int, start: int, end: int) -> torch.Tensor:
    """Columns [start, end) of a standard-normal D x K matrix that depends on init_seed alone, not on the
    world size: column c comes from block c // INIT_CHUNK, drawn from its own generator. So a run's
    initial class weights are the same at any number of ranks."""
    columns = []
    for block in range(start // INIT_CHUNK, -(-end // INIT_CHUNK)):
        generator = torch.Generator().manual_seed((init_seed * 0x9E3779B1 + block) % 2**32)  # torch keeps 32 bits
        values_DC = torch.randn(embedding_size, INIT_CHUNK, generator=generator)
        low, high = max(start, block * INIT_CHUNK), min(end, (block + 1) * INIT_CHUNK)
        columns.append(values_DC[:, low - block * INIT_CHUNK:high - block * INIT_CHUNK])
    return torch.cat(columns, dim=1) if columns else torch.empty(embedding_size, 0)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by `factor`."""

    @staticmethod
    def forward(ctx, x, factor: float):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


class ShardedClassLoss(torch.nn.Module):
    """Base of the class-sharded losses: this rank's block of one class parameter, named `weight_name`."""

    weight_name = "W"
    class_dim = 1

    def __init__(self, num_classes: int, embedding_size: int, *, per_class: int = 1, class_tile: int,
                 data_parallel: bool, group: dist.ProcessGroup | None) -> None:
        super().__init__()
        name = type(self).__name__
        if data_parallel not in (True, False):
            raise ValueError(f"{name}: data_parallel must be True or False, got {data_parallel!r}")
        self.num_classes = check_positive_int(name, "num_classes", num_classes)
        self.embedding_size = check_positive_int(name, "embedding_size", embedding_size)
        self.class_tile = check_positive_int(name, "class_tile", class_tile)
        self.per_class = per_class
        self.data_parallel, self.group = data_parallel, group
        self.rank, self.world_size = world_rank_and_size(group)
        self.class_start, self.class_end = class_block(self.num_classes, self.world_size, self.rank)
        entries = (self.class_end - self.class_start) * per_class
        shape = (self.embedding_size, entries) if self.class_dim == 1 else (entries, self.embedding_size)
        self.register_parameter(self.weight_name, torch.nn.Parameter(torch.empty(shape)))

    @property
    def weight(self) -> torch.nn.Parameter:
        return getattr(self, self.weight_name)

    @property
    def num_owned(self) -> int:
        return self.class_end - self.class_start

    def seeded_normal(self, init_seed: int) -> torch.Tensor:
        """This rank's block of a standard-normal full parameter drawn from `init_seed` alone (entry j of the
        class dimension is column j of `seeded_columns`), so the initial values do not depend on W."""
        columns = seeded_columns(init_seed, self.embedding_size, self.class_start * self.per_class,
                                 self.class_end * self.per_class)
        return columns if self.class_dim == 1 else columns.t()

    def init_normal(self, init_seed: int | None, std: float = 1.0) -> None:
        """Normal(0, std) initial values: from `init_seed` alone when given (the same full parameter at any
        world size), else from this rank's torch generator (PML's weight_init_func on the block)."""
        with torch.no_grad():
            if init_seed is None:
                self.weight.normal_(0.0, std)
            else:
                self.weight.copy_(self.seeded_normal(init_seed) * std)

    def seeded_uniform(self, init_seed: int, bound: float) -> torch.Tensor:
        """As seeded_normal, uniform on [-bound, bound] (erf(z / sqrt 2) of a standard normal z is uniform)."""
        return torch.special.erf(self.seeded_normal(init_seed) / math.sqrt(2)) * bound

    def owned_blocks(self) -> dict[str, OwnedBlock]:
        """{parameter name: its block}: the parameters this rank owns, which a data-parallel average must skip."""
        return {self.weight_name: OwnedBlock(self.class_start, self.class_end, self.num_classes, self.class_dim,
                                             self.per_class)}

    @property
    def full_shape(self) -> tuple[int, int]:
        """The shape of the whole parameter over all ranks (PML's)."""
        entries = self.num_classes * self.per_class
        return (self.embedding_size, entries) if self.class_dim == 1 else (entries, self.embedding_size)

    def load_full_weight(self, full_weight: torch.Tensor) -> None:
        """Copy this rank's block out of the full parameter (e.g. PML's `loss.W` / `loss.proxies`)."""
        if tuple(full_weight.shape) != self.full_shape:
            raise ValueError(f"full weight must have shape {self.full_shape}, got {tuple(full_weight.shape)}")
        block = self.owned_blocks()[self.weight_name]
        with torch.no_grad():
            self.weight.copy_(block.of_full(full_weight))

    def gather_full_weight(self) -> torch.Tensor:
        """The full parameter on every rank (a collective: call it on all ranks; only for small K)."""
        with torch.no_grad():
            rows = self.weight.detach().t().contiguous() if self.class_dim == 1 else self.weight.detach()
            full = all_gather_no_grad(rows, self.group, name="class weights")
            return full.t() if self.class_dim == 1 else full

    def gather_batch(self, embeddings: torch.Tensor, labels: torch.Tensor, *,
                     normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(e_ND, labels_N): the global batch, embeddings L2-normalised when `normalize`, with the exact
        gradient (times W with data_parallel); raises the same ValueError on every rank for bad input."""
        if world_rank_and_size(self.group) != (self.rank, self.world_size):
            raise ValueError(f"the process group changed since construction: built for rank {self.rank} of "
                             f"{self.world_size}, now {world_rank_and_size(self.group)}")
        sizes = gather_sizes(embeddings, self.group, name="embeddings")
        label_sizes = gather_sizes(labels, self.group, name="labels")
        if sizes != label_sizes:
            raise ValueError(f"every rank needs one label per embedding: embeddings per rank {sizes}, "
                             f"labels per rank {label_sizes}")
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings must have shape (n, {self.embedding_size}), got {tuple(embeddings.shape)}")
        if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be a 1-D integer tensor, got shape {tuple(labels.shape)} {labels.dtype}")
        if embeddings.dtype != self.weight.dtype:
            raise ValueError(f"embeddings dtype {embeddings.dtype} differs from the class weights' "
                             f"{self.weight.dtype}: cast the loss (e.g. .double()) or the embeddings")
        labels_N = all_gather_no_grad(labels, self.group, name="labels", sizes=sizes).long()
        bad_N = (labels_N < 0) | (labels_N >= self.num_classes)
        if bool(bad_N.any()):
            rows = torch.nonzero(bad_N).squeeze(1)[:5].tolist()
            listing = ", ".join(f"label {int(labels_N[i])} at global row {i}" for i in rows)
            raise ValueError(f"labels must lie in [0, {self.num_classes}) (num_classes={self.num_classes}): "
                             f"{int(bad_N.sum())} do not ({listing})")
        local_nD = F.normalize(embeddings, p=2, dim=1) if normalize else embeddings
        if self.data_parallel and self.world_size > 1:
            local_nD = _ScaleGrad.apply(local_nD, float(self.world_size))
        return all_gather_with_grad(local_nD, self.group, sizes=sizes), labels_N

    def owned_targets(self, labels_N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(owned_N: the row's class is in this block, target_N: its index within the block or -1)."""
        owned_N = (labels_N >= self.class_start) & (labels_N < self.class_end)
        return owned_N, torch.where(owned_N, labels_N - self.class_start, torch.full_like(labels_N, -1))

    def zero_loss(self, e_ND: torch.Tensor) -> torch.Tensor:
        """0, attached to the embeddings and the block (an empty global batch)."""
        return (e_ND.sum() + self.weight.sum()) * 0

    def cross_entropy_rows(self, owned_N: torch.Tensor, rest_lse_N: torch.Tensor,
                           target_logit_N: torch.Tensor) -> torch.Tensor:
        """loss_N = log sum over every rank's logits of exp - target logit, from this rank's parts: the lse
        over its non-target logits and the target logits of the rows it owns. The value is the same on every
        rank; rank r's graph receives softmax with the GLOBAL normaliser on its logits and -1 on its targets."""
        target_logit_N = torch.where(owned_N, target_logit_N, torch.zeros_like(target_logit_N))
        part_lse_N = torch.where(owned_N, torch.logaddexp(rest_lse_N, target_logit_N), rest_lse_N)
        lse_N = merged_logsumexp(part_lse_N, all_reduce_logsumexp_no_grad(part_lse_N, self.group))
        return lse_N - self.summed_over_ranks(target_logit_N)

    def summed_over_ranks(self, part: torch.Tensor) -> torch.Tensor:
        """sum over ranks of `part` (same value on every rank); each rank's graph gets its own term's gradient."""
        return sum_with_part_grad(part, all_reduce_sum_no_grad(part, self.group))

