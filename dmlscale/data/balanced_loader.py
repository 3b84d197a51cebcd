"""Class-balanced batches from labelled WebDataset shards: m samples of each class in every global batch.

    loader = make_loader("shards/{000000..000099}.tar", task="image_label", m_per_class=4, batch_size=64,
                         rank=rank, world_size=world, num_workers=8, seed=0, image_transform=preprocess)
    for epoch in range(start_epoch, num_epochs):
        loader.set_epoch(epoch)
        for batch in loader:       # {"image": B x C x H x W, "label": B, "key": [B keys]}
            ...                    # exactly loader.num_batches batches on every rank
            checkpoint["data"] = loader.state_dict()

Every rank reads the shards' label indexes (label_index.py), computes the same epoch plan from (seed,
epoch) and the labels alone (DistributedMPerClassSampler over every labelled sample of the shard list),
takes its slice of each global batch and reads those samples by random access (balanced_batches.py).
So: no communication; equal batch counts on every rank; in every global batch, m samples of each of
its world_size x batch_size / m distinct classes (and each rank batch holds whole classes); each sample
at most once per epoch, every one exactly once when the class sizes allow (see the sampler); a bad
sample is skipped, counted and replaced by one of its class (balanced_plan.py says when that can
repeat a sample). A batch is a function of (seed, epoch, batch number, rank slice) and the data, so a
resume gives exactly the rest of the epoch, with any worker count, and at another world size with the
same global batch size (world_size x batch_size). Samples without a label are left out (warned).

Trade-offs against the streaming loader (pipeline.py): random reads instead of sequential ones (a
seek per sample, fine on local disks and file systems with good random reads, slow on object stores),
and each rank keeps the labels and byte spans of every sample and the epoch's plan (under 100 bytes a
sample) in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from dmlscale.data.balanced_batches import ACCOUNT, BalancedBatches, BatchSettings
from dmlscale.data.balanced_plan import EpochRefill, build_table, epoch_refill
from dmlscale.data.decode import DEFAULT_MAX_IMAGE_PIXELS, TASKS
from dmlscale.data.shard_list import LOG, ShardSet, ShardSources, check_missing_shards, list_shards
from dmlscale.data.skip_log import SkipLog
from dmlscale.data.slot_stream import WORKER_ERROR
from dmlscale.param_checks import check_positive_int, check_real
from dmlscale.samplers import DistributedMPerClassSampler
from dmlscale.samplers.checks import check_int

OWNER = "make_loader"
STATE_KIND = "m_per_class"
# streaming-loader options with no meaning here: given, they are refused by name
UNUSED_OPTIONS = ("tokenizer", "context_length", "shuffle_buffer", "samples_per_epoch")


class BalancedLoader:
    """Iterable of class-balanced batch dicts; see the module docstring and make_loader."""

    def __init__(self, sources: ShardSet | ShardSources, *, m_per_class: int, batch_size: int, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, seed: int = 0, mode: str = "epoch",
                 task: str = "image_label", image_transform: Callable | None = None,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, max_skip_fraction: float = 0.1,
                 skip_check_after: int = 1000, log_interval_s: float = 30.0, pin_memory: bool = False,
                 prefetch_factor: int = 4, multiprocessing_context: str | None = None, local_skip_check: bool = True,
                 missing_shards: str = "error", cache_index: bool = True) -> None:
        m = check_int(OWNER, "m_per_class", m_per_class, minimum=1)
        check_positive_int(OWNER, "batch_size", batch_size)
        check_positive_int(OWNER, "world_size", world_size)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"{OWNER}: rank must be an int in [0, world_size={world_size}), got {rank!r}")
        check_int(OWNER, "num_workers", num_workers, minimum=0)
        check_int(OWNER, "seed", seed, minimum=0)
        check_positive_int(OWNER, "max_image_pixels", max_image_pixels)
        check_positive_int(OWNER, "prefetch_factor", prefetch_factor)
        check_real(OWNER, "max_skip_fraction", max_skip_fraction, minimum=0)
        check_int(OWNER, "skip_check_after", skip_check_after, minimum=1)
        check_real(OWNER, "log_interval_s", log_interval_s, minimum=0)
        for name, flag in (("local_skip_check", local_skip_check), ("cache_index", cache_index)):
            if not isinstance(flag, bool):
                raise ValueError(f"{OWNER}: {name} must be a bool, got {flag!r}")
        check_missing_shards(missing_shards)
        if mode != "epoch":
            raise ValueError(f"{OWNER}: m_per_class={m} needs mode='epoch' (each sample at most once per epoch), "
                             f"got mode={mode!r}")
        if task != "image_label":
            raise ValueError(f"{OWNER}: m_per_class={m} needs task='image_label' (labels from KEY.cls), got "
                             f"task={task!r}; allowed tasks {TASKS}")
        if batch_size % m:
            raise ValueError(f"{OWNER}: m_per_class={m} must divide batch_size={batch_size}")
        shard_set = sources if isinstance(sources, ShardSet) else list_shards(sources, missing_shards=missing_shards)
        self._table, report = build_table(shard_set, cache_index=cache_index)
        if len(self._table.label_I) == 0:
            raise ValueError(f"{OWNER}: m_per_class={m} needs labelled samples (KEY.cls), but none of the "
                             f"{shard_set.num_samples} listed samples of {len(shard_set.shards)} shards has a label")
        if report["unlabelled"]:
            LOG.warning("%d of %d indexed samples have no usable label (KEY.cls) and are left out of the "
                        "class-balanced plan", report["unlabelled"], report["unlabelled"] + len(self._table.label_I))
        self._sampler = DistributedMPerClassSampler(self._table.label_I, m, batch_size, rank=rank,
                                                    world_size=world_size, seed=seed)
        self._skip_log = SkipLog(max_skip_fraction=float(max_skip_fraction), check_after=skip_check_after,
                                 log_interval_s=float(log_interval_s), where=f"rank {rank}: ",
                                 local_check=local_skip_check)
        for path, (listed, indexed) in report["size_mismatch"].items():
            self._skip_log.sizes_disagree(path, listed, indexed)
        self._settings = BatchSettings(seed=seed, rank=rank, m=m, image_transform=image_transform,
                                       max_image_pixels=max_image_pixels)
        self._shards = shard_set.fingerprint()
        self.num_workers, self.pin_memory, self.prefetch_factor = num_workers, pin_memory, prefetch_factor
        self.multiprocessing_context = multiprocessing_context
        self._epoch, self._consumed = 0, 0
        self._refill: EpochRefill | None = None

    @property
    def num_batches(self) -> int:
        """Per rank per epoch, equal on every rank."""
        return self._sampler.num_batches

    epoch_batches = num_batches

    @property
    def num_samples(self) -> int:
        return self.num_batches * self._sampler.batch_size

    @property
    def num_dropped(self) -> int:
        """Labelled samples an epoch leaves out (a different set each epoch where class sizes allow)."""
        return self._sampler.num_dropped

    def __len__(self) -> int:
        return self.num_batches

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch; keeps the position when `epoch` is the current one (so
        set_epoch after load_state_dict resumes in the middle)."""
        check_int(OWNER, "epoch", epoch, minimum=0)
        if epoch != self._epoch:
            self._epoch, self._consumed = epoch, 0

    def state_dict(self) -> dict:
        """{"loader", "epoch", "batches_consumed", "shards", "sampler" (its layout)}: the same on every rank."""
        self._sampler.set_epoch(self._epoch)
        return {"loader": STATE_KIND, "epoch": self._epoch, "batches_consumed": self._consumed,
                "shards": self._shards, "sampler": self._sampler.state_dict(batches_consumed=self._consumed)}

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` stood: the rest of its epoch, exactly (at another world size too, when the
        global batch size is the same). Another seed, m, global batch size or shard list is refused by name."""
        if not isinstance(state, dict) or state.get("loader") != STATE_KIND:
            kind = state.get("loader", "the streaming loader's") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{OWNER}: cannot resume a class-balanced loader from a state of kind {kind!r} (saved "
                             f"without m_per_class?); start a new run or keep the data settings")
        if state.get("shards") != self._shards:
            raise ValueError(f"{OWNER}: cannot resume: saved shards={state.get('shards')!r} but this loader has "
                             f"shards={self._shards!r} (another shard list or sizes)")
        self._sampler.load_state_dict(state["sampler"])
        saved = self._sampler.state_dict()
        self._epoch, self._consumed = saved["epoch"], saved["batches_consumed"]

    def _epoch_refill(self) -> EpochRefill:
        if self._refill is None or self._refill.epoch != self._epoch:
            sampler = self._sampler
            self._refill = epoch_refill(self._table, sampler.global_plan(self._epoch), m=sampler.m_per_class,
                                        rank=sampler.rank, batch_size=sampler.batch_size, seed=sampler.seed,
                                        epoch=self._epoch)
        return self._refill

    def __iter__(self) -> Iterator[dict]:
        if self._consumed >= self.num_batches:  # the last pass finished its epoch
            self._epoch, self._consumed = self._epoch + 1, 0
        dataset = BalancedBatches(self._table, self._epoch_refill(), self._settings)
        order = range(self._consumed, self.num_batches)
        if self.num_workers == 0:
            batches = (dataset[batch] for batch in order)
        else:
            from torch.utils.data import DataLoader

            batches = iter(DataLoader(dataset, batch_size=None, sampler=order, num_workers=self.num_workers,
                                      pin_memory=self.pin_memory, prefetch_factor=self.prefetch_factor,
                                      persistent_workers=False, multiprocessing_context=self.multiprocessing_context))
        try:
            for batch in batches:
                if WORKER_ERROR in batch:
                    raise batch[WORKER_ERROR]
                self._count(batch.pop(ACCOUNT))
                self._consumed += 1
                yield batch
        finally:
            dataset.close()

    def _count(self, account: dict) -> None:
        for repeat in account["good"]:
            self._skip_log.saw_good(repeat=repeat)
        for reason, path, key in account["bad"]:
            self._skip_log.skip(reason, path, key)

    def totals(self) -> dict:
        """What this loader read over its life: {"seen", "skipped", "repeats", "by_reason", "by_shard",
        "size_mismatch"} (accounting.py), "seen" counting every sample read, refill tries included."""
        return self._skip_log.snapshot()

    @property
    def skipped(self) -> dict[str, int]:
        return dict(self._skip_log.by_reason)

    @property
    def skipped_by_shard(self) -> dict[str, int]:
        return dict(self._skip_log.by_shard)

    @property
    def num_skipped(self) -> int:
        return self._skip_log.num_skipped


def make_balanced_loader(sources: ShardSet | ShardSources, **options: object) -> BalancedLoader:
    """make_loader with m_per_class: a BalancedLoader; a streaming-only option is refused by name."""
    given = [name for name in UNUSED_OPTIONS if options.get(name) is not None]
    if given:
        raise ValueError(f"{OWNER}: {given[0]}={options[given[0]]!r} has no use with "
                         f"m_per_class={options.get('m_per_class')!r}; leave it out")
    return BalancedLoader(sources, **{name: value for name, value in options.items() if name not in UNUSED_OPTIONS})
