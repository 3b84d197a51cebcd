"""Score a model on evaluation shards: zero-shot top-1 and retrieval (image-text), or precision@1 and
MAP@R (image-label). Used by the trainer (periodic and final) and by `dmlscale eval`.

Legend: n rows embedded on this rank, D embedding size. Every sample is read exactly once: rank r
decodes samples r, r + W, r + 2W, ... of the shards in order (the training loader drops a tail so that
ranks stay equal; evaluation must not). Scores are computed on rank 0 over all ranks' rows and
returned on every rank.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from dmlscale import eval as ev
from dmlscale.data.decode import BadSample, decode_sample
from dmlscale.data.shard_list import list_shards
from dmlscale.data.tar_reader import read_samples
from dmlscale.distributed.collectives import all_gather_objects, world_rank_and_size
from dmlscale.monitor import Progress
from dmlscale.train.step_metrics import global_similarity_stats

LOG = logging.getLogger("dmlscale.data")
MAX_IMAGE_PIXELS = 50_000_000
BAD_IMAGE = "undecodable sample"


@dataclass
class EvalCounts:
    """What an evaluation read: samples scored, and unreadable samples skipped by shard path and by reason."""

    num_scored: int = 0
    skipped_by_shard: Counter = field(default_factory=Counter)
    skipped_by_reason: Counter = field(default_factory=Counter)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped_by_shard.values())

    def merge(self, other: EvalCounts) -> None:
        self.num_scored += other.num_scored
        self.skipped_by_shard.update(other.skipped_by_shard)
        self.skipped_by_reason.update(other.skipped_by_reason)


def describe_skips(skipped_by_shard: dict, skipped_by_reason: dict, num_shards: int) -> str:
    """One line: how many unreadable samples were left out, why, and from which shards (up to 10)."""
    reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped_by_reason.items()))
    named = ", ".join(f"{path} ({count})" for path, count in sorted(skipped_by_shard.items())[:10])
    return (f"skipped {sum(skipped_by_shard.values())} unreadable samples ({reasons}) in {len(skipped_by_shard)} "
            f"of {num_shards} shard(s): {named}{', ...' if len(skipped_by_shard) > 10 else ''}; "
            f"the scores leave them out")


def eval_batches(shards: Sequence[str], *, rank: int, world_size: int, batch_size: int, image_transform: Callable,
                 max_samples: int = 0, counts: EvalCounts | None = None) -> Iterator[dict]:
    """Batches {"image": [n, C, H, W], "caption": [str] or None, "label": LongTensor or None} of this
    rank's share of the shards' samples; unreadable samples (a truncated tar, undecodable bytes) are
    skipped and, with `counts`, counted there by shard and reason, as are the samples yielded."""
    counts = EvalCounts() if counts is None else counts
    shard_set = list_shards(list(shards))
    images, captions, labels, position = [], [], [], -1

    def flush():
        batch = {"image": torch.stack(images),
                 "caption": list(captions) if all(c is not None for c in captions) else None,
                 "label": torch.tensor(labels) if all(label is not None for label in labels) else None}
        images.clear(), captions.clear(), labels.clear()
        return batch

    for shard_index, shard in enumerate(shard_set.shards):
        for raw in read_samples(shard.path, shard_index, 0, shard.num_samples):
            position += 1
            if max_samples and position >= max_samples:
                break
            if position % world_size != rank:
                continue
            problem = raw.problem
            if problem is None:
                try:
                    image, _ = decode_sample(raw.fields, task="image_label" if "txt" not in raw.fields else "image_text",
                                             max_image_pixels=MAX_IMAGE_PIXELS)
                except BadSample as error:
                    problem = error.reason or BAD_IMAGE
            if problem is not None:
                counts.skipped_by_shard[shard.path] += 1
                counts.skipped_by_reason[problem] += 1
                continue
            counts.num_scored += 1
            images.append(image_transform(image))
            captions.append(raw.fields["txt"].decode("utf-8").strip() if "txt" in raw.fields else None)
            labels.append(int(raw.fields["cls"].decode("ascii")) if "cls" in raw.fields else None)
            if len(images) == batch_size:
                yield flush()
    if images:
        yield flush()


@torch.no_grad()
def evaluate(model: torch.nn.Module, shards: Sequence[str], *, task: str, rank: int, world_size: int, batch_size: int,
             image_transform: Callable, tokenize: Callable | None = None, classnames: Sequence[str] | None = None,
             templates: Sequence[str] | None = None, retrieval: bool = True, max_samples: int = 0,
             device: torch.device | str = "cpu", similarity_samples: bool = False, progress: bool = False,
             warn_skips: bool = True) -> dict:
    """{"metric name": value} equal on every rank, with eval/num_samples (samples scored, all ranks),
    eval/num_skipped (unreadable samples left out; "_skipped_by_shard" / "_skipped_by_reason" break them
    down) and eval/sim/* (similarity statistics of the whole eval set, see train.step_metrics). With `similarity_samples`, also "_pos"/"_neg": sampled
    positive and negative cosine similarities of rank 0's anchors (for the histogram plot).
    `progress`: a bar on rank 0. `warn_skips`: rank 0 logs a warning (describe_skips) when samples were
    unreadable; callers that report the counts themselves turn it off."""
    was_training = model.training
    model.eval()
    feats, texts, labels = [], [], []
    bar = Progress(None, desc="eval", unit="sample", rank=rank, enabled=progress)
    counts = EvalCounts()
    for batch in eval_batches(shards, rank=rank, world_size=world_size, batch_size=batch_size,
                              image_transform=image_transform, max_samples=max_samples, counts=counts):
        bar.update(len(batch["image"]))
        image = batch["image"].to(device)
        if task == "image_label":
            feats.append(model(image).float())
        else:
            feats.append(model.encode_image(image).float())
            if retrieval and batch["caption"] is not None:
                texts.append(model.encode_text(tokenize(batch["caption"]).to(device)).float())
        if batch["label"] is not None:
            labels.append(batch["label"])
    bar.close()
    totals = EvalCounts()
    for rank_counts in all_gather_objects(counts):  # [counts] on one process
        totals.merge(rank_counts)
    if warn_skips and totals.num_skipped and rank == 0:
        LOG.warning("evaluation %s", describe_skips(totals.skipped_by_shard, totals.skipped_by_reason, len(shards)))
    if totals.num_scored == 0:  # the same on every rank
        raise ValueError(f"evaluation scored no samples: {totals.num_skipped} unreadable samples skipped in "
                         f"{len(totals.skipped_by_shard)} of {len(shards)} shard(s) {list(shards)[:5]}")
    image_nD = torch.nn.functional.normalize(torch.cat(feats), dim=-1).cpu()
    labels_n = torch.cat(labels) if len(labels) == len(feats) and labels else None
    # how many samples the scores rest on; unreadable ones by shard and reason (private keys: not logged)
    out: dict = {"eval/num_samples": totals.num_scored, "eval/num_skipped": totals.num_skipped,
                 "_skipped_by_shard": dict(totals.skipped_by_shard), "_skipped_by_reason": dict(totals.skipped_by_reason)}
    gathered = world_rank_and_size()[1] > 1
    if task == "image_label":
        if labels_n is None:
            raise ValueError("evaluation of task image_label needs a label (.cls) in every eval sample")
        include = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
        fn = ev.distributed_metric_accuracy if gathered else ev.metric_accuracy
        out.update({f"eval/{k}": v for k, v in fn(image_nD, labels_n, include=include, distance="cosine").items()})
    else:
        if classnames is not None and labels_n is not None:
            encode = lambda tokens: model.encode_text(tokens.to(device)).float().cpu()  # noqa: E731
            classifier_DC = ev.zero_shot_classifier(encode, tokenize, list(classnames), list(templates))
            fn = ev.distributed_zero_shot_accuracy if gathered else ev.zero_shot_accuracy
            out.update({f"eval/zero_shot_{k}": v for k, v in fn(image_nD, labels_n, classifier_DC).items()})
        if texts:
            text_nD = torch.nn.functional.normalize(torch.cat(texts), dim=-1).cpu()
            fn = ev.distributed_retrieval_metrics if gathered else ev.retrieval_metrics
            out.update({f"eval/{k}": v for k, v in fn(image_nD, text_nD).items()})
    max_kept = 10_000 if similarity_samples else 0
    if task == "image_label":
        stats = global_similarity_stats(image_nD.to(device), labels_n=labels_n, max_samples=max_kept)
    elif texts:
        stats = global_similarity_stats(image_nD.to(device), text_nD=torch.cat(texts), max_samples=max_kept)
    else:
        stats = None
    if stats is not None:
        out.update(stats.metrics("eval/sim/"))
        if similarity_samples and rank == 0:
            out["_pos"], out["_neg"] = stats.pos_samples_K.cpu(), stats.neg_samples_K.cpu()
    model.train(was_training)
    return out
