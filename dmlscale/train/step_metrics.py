"""What the trainer logs beside the loss: loss terms, logit scale and bias, the gradient norm, skipped
samples and statistics of the step's global similarity matrix. Kept out of trainer.py so the loop stays
short; every function here that communicates must be called on every rank at the same step.

Legend: n rows on this rank, N rows on all ranks, D embedding size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from dmlscale.distributed.collectives import (
    all_gather_no_grad,
    all_gather_objects,
    all_reduce_sum_no_grad,
    gather_sizes,
    global_offsets,
    world_rank_and_size,
)
from dmlscale.monitor.similarity_stats import SimilarityStats, clip_similarity_stats, label_similarity_stats

_COUNTERS = ("num_pos", "sum_pos", "num_neg", "sum_neg", "num_anchors_with_neg", "sum_hardest_neg",
             "num_triplets", "num_active_triplets")


def split_loss(value) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total, terms): a tensor is its own total with no terms; a mapping of terms (open_clip's
    output_dict convention) totals to the sum of its values."""
    if isinstance(value, torch.Tensor):
        return value, {}
    if isinstance(value, Mapping) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
        return torch.stack([v.reshape(()) for v in value.values()]).sum(), dict(value)
    raise ValueError(f"loss must return a tensor or a non-empty dict of tensors, got {value!r}")


class StepRecorder:
    """Wraps a step's loss function: averages its terms between logs and keeps the outputs the loss saw
    (the whole local batch, also under gradient caching) on steps whose similarity is logged."""

    def __init__(self):
        self._term_sums: dict[str, float] = {}
        self._num_steps = 0
        self.outputs: dict[str, torch.Tensor] | None = None

    def wrap(self, loss_fn: Callable, *, keep_outputs: bool) -> Callable:
        def recorded(outputs: dict) -> torch.Tensor:
            total, terms = split_loss(loss_fn(outputs))
            self._num_steps += 1
            for name, term in terms.items():
                self._term_sums[name] = self._term_sums.get(name, 0.0) + float(term.detach())
            if keep_outputs:
                self.outputs = {k: v.detach() for k, v in outputs.items() if isinstance(v, torch.Tensor)}
            return total
        return recorded

    def pop_terms(self, prefix: str = "train/loss/") -> dict[str, float]:
        """Each term's mean over the steps since the last call (nothing for a single-term loss)."""
        out = {prefix + name: total / max(1, self._num_steps) for name, total in self._term_sums.items()}
        self._term_sums, self._num_steps = {}, 0
        return out


class GradNormProbe:
    """The global gradient norm before clipping at the engine's last optimizer step.

    The engine computes it for its clipping and keeps it: ZeRO 1-3 and bf16 by DeepSpeed, ZeRO-0 fp32 by
    build_engine(record_grad_norm=True) (engine_paths.record_grad_norm); the probe reads
    engine.get_global_grad_norm(). Only an engine built with record_grad_norm=False under ZeRO-0 fp32
    keeps none; there the probe computes it on the all-reduced gradients just before clipping (or before
    the optimizer step when nothing is clipped): a second pass over the gradients."""

    def __init__(self, engine):
        self._engine, self._norm = engine, None
        self._own = not (engine.zero_optimization() or engine.bfloat16_enabled() or engine.fp16_enabled()
                         or getattr(engine, "dmlscale_records_grad_norm", False))
        if not self._own:
            return
        if engine.gradient_clipping() > 0:
            clip = engine.clip_fp32_gradients

            def record_then_clip():
                self._record()
                clip()
            engine.clip_fp32_gradients = record_then_clip  # called by DeepSpeed's _take_model_step
        else:
            engine.optimizer.register_step_pre_hook(lambda *_: self._record())

    def _record(self) -> None:
        norms = [p.grad.detach().float().norm() for p in self._engine.module.parameters() if p.grad is not None]
        self._norm = float(torch.stack(norms).norm()) if norms else 0.0

    def value(self) -> float | None:
        if self._own:
            return self._norm
        norm = self._engine.get_global_grad_norm()
        return float(norm) if isinstance(norm, torch.Tensor) else norm


def logit_metrics(module: torch.nn.Module) -> dict[str, float]:
    """train/logit_scale (exp of the parameter: the factor the loss multiplies by) and train/logit_bias.
    Collective under ZeRO-3 (the parameters are gathered)."""
    params = {name: getattr(module, name, None) for name in ("logit_scale", "logit_bias")}
    params = {name: p for name, p in params.items() if isinstance(p, torch.Tensor)}
    if not params:
        return {}
    from dmlscale.train.deepspeed_quiet import deepspeed

    partitioned = any(hasattr(p, "ds_id") for p in params.values())
    with deepspeed.zero.GatheredParameters(list(params.values()), enabled=partitioned):
        values = {name: float(p.detach().float().reshape(-1)[0]) for name, p in params.items()}
    out = {"train/logit_scale": math.exp(values["logit_scale"])} if "logit_scale" in values else {}
    if "logit_bias" in values:
        out["train/logit_bias"] = values["logit_bias"]
    return out


def skipped_metrics(skipped: Mapping[str, int]) -> dict[str, int]:
    """data/skipped_total and data/skipped/<reason>, summed over ranks, from a loader's `skipped`."""
    counts: dict[str, int] = {}
    for rank_counts in all_gather_objects(dict(skipped)):
        for reason, num in rank_counts.items():
            counts[reason] = counts.get(reason, 0) + num
    return {"data/skipped_total": sum(counts.values()), **{f"data/skipped/{r}": n for r, n in sorted(counts.items())}}


def _full_precision(x: torch.Tensor) -> torch.Tensor:
    """Detached, bf16/fp16 raised to fp32 (fp64 stays fp64)."""
    return x.detach() if x.dtype in (torch.float32, torch.float64) else x.detach().float()


def global_similarity_stats(query_nD: torch.Tensor, *, text_nD: torch.Tensor | None = None,
                            labels_n: torch.Tensor | None = None, max_samples: int = 0) -> SimilarityStats:
    """Statistics of this rank's rows against all ranks' rows (texts for CLIP, labelled embeddings
    otherwise), with the global row offset, counters summed over ranks. Samples stay local."""
    if (text_nD is None) == (labels_n is None):
        raise ValueError("global_similarity_stats: pass exactly one of text_nD and labels_n, got "
                         f"text_nD={'a tensor' if text_nD is not None else None}, "
                         f"labels_n={'a tensor' if labels_n is not None else None}")
    query_nD = _full_precision(query_nD)
    sizes = gather_sizes(query_nD, name="similarity rows")
    offset = global_offsets(sizes)[world_rank_and_size()[0]]
    if text_nD is not None:
        text_ND = all_gather_no_grad(_full_precision(text_nD).to(query_nD.dtype), name="texts", sizes=sizes)
        stats = clip_similarity_stats(query_nD, text_ND, row_offset=offset, max_samples=max_samples)
    else:
        labels_n = labels_n.to(query_nD.device)
        ref_ND = all_gather_no_grad(query_nD, name="embeddings", sizes=sizes)
        ref_labels_N = all_gather_no_grad(labels_n, name="labels", sizes=sizes)
        stats = label_similarity_stats(query_nD, labels_n, ref_emb_RD=ref_ND, ref_labels_R=ref_labels_N,
                                       row_offset=offset, max_samples=max_samples)
    if world_rank_and_size()[1] > 1:
        summed = all_reduce_sum_no_grad(torch.tensor([float(getattr(stats, c)) for c in _COUNTERS],
                                                     dtype=torch.float64, device=query_nD.device)).tolist()
        for name, value in zip(_COUNTERS, summed):
            setattr(stats, name, int(round(value)) if name.startswith("num") else value)
    return stats


def output_similarity_metrics(outputs: Mapping[str, torch.Tensor], labels_n: torch.Tensor | None,
                              prefix: str = "train/sim/") -> dict[str, float]:
    """Similarity statistics of one step's outputs (CLIP image/text features, or labelled embeddings)."""
    if "image_features" in outputs:
        stats = global_similarity_stats(outputs["image_features"], text_nD=outputs["text_features"])
    else:
        stats = global_similarity_stats(outputs["embeddings"], labels_n=labels_n)
    return stats.metrics(prefix)
