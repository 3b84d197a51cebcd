"""The trainer's extra metrics against independent computations: the gradient norm against a plain
torch backward on the concatenated batch (DeepSpeed ZeRO-0 and ZeRO-2, gradient caching, 1 and 2 gloo
ranks; it is also the norm the engine clipped with), similarity statistics against brute-force N x N
matrices (2 ranks, unequal rows), skipped counts against the damage the dirty-shard fixture made, logit
scale against exp of the parameter.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss as OpenClipLoss

from dmlscale.train.step_metrics import (StepRecorder, global_similarity_stats, logit_metrics, skipped_metrics,
                                         split_loss)
from tests.distributed.launch import results, run_world
from tests.train.helpers import MICRO_BATCH, batch_source, clip_forward, tiny_clip

MARGIN = 0.2  # similarity_stats' default


def test_loss_terms_are_summed_and_averaged_between_logs():
    recorder = StepRecorder()
    loss_fn = recorder.wrap(lambda out: {"a": out["x"].sum(), "b": 2 * out["x"].sum()}, keep_outputs=True)
    totals = [float(loss_fn({"x": torch.tensor([v])})) for v in (1.0, 3.0)]
    assert totals == [3.0, 9.0]  # a + b
    assert recorder.pop_terms() == {"train/loss/a": 2.0, "train/loss/b": 4.0}  # means over the two steps
    assert recorder.pop_terms() == {} and torch.equal(recorder.outputs["x"], torch.tensor([3.0]))
    assert split_loss(torch.tensor(1.5))[1] == {}
    with pytest.raises(ValueError, match="'oops'"):
        split_loss("oops")


def test_logit_scale_is_exp_of_the_parameter_and_bias_is_raw():
    model = tiny_clip(patch_dropout=0.0)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(7.0))
    assert logit_metrics(model) == {"train/logit_scale": pytest.approx(7.0, rel=1e-6)}
    model.logit_bias = torch.nn.Parameter(torch.tensor([-3.5]))
    assert logit_metrics(model)["train/logit_bias"] == -3.5
    assert logit_metrics(torch.nn.Linear(2, 2)) == {}


def _grad_norm_vs_reference(rank, world_size, zero_stage, clip_norms):
    from dmlscale.distributed import DistributedClipLoss
    from dmlscale.train.engine import build_engine, engine_contrastive_step
    from dmlscale.train.step_metrics import GradNormProbe

    model = tiny_clip(patch_dropout=0.0)
    reference = copy.deepcopy(model)
    chunks = [c for r in range(world_size) for c in batch_source(0, r, 2)]  # every rank's rows, in rank order
    out = reference(image=torch.cat([c[0] for c in chunks]), text=torch.cat([c[1] for c in chunks]))
    OpenClipLoss()(out["image_features"], out["text_features"], out["logit_scale"]).backward()
    expected = torch.stack([p.grad.norm() for p in reference.parameters() if p.grad is not None]).norm().item()

    outcomes = []
    for clip_norm in clip_norms:
        engine = build_engine(copy.deepcopy(model), zero_stage=zero_stage, precision="fp32", lr=1e-2,
                              weight_decay=0.0, gradient_clipping=clip_norm, warmup_steps=1, total_steps=4,
                              micro_batch_size=MICRO_BATCH, grad_accum_steps=2)
        stepped = []  # the norms of the gradients the optimizer steps with (ZeRO 1-2 step one group at a time)
        engine.dmlscale_base_optimizer.register_step_pre_hook(lambda optimizer, *_: stepped.extend(
            p.grad.norm().item() for g in optimizer.param_groups for p in g["params"] if p.grad is not None))
        probe = GradNormProbe(engine)
        loss_fn = DistributedClipLoss()
        engine_contrastive_step(engine, batch_source(0, rank, 2), clip_forward(engine),
                                lambda o: loss_fn(o["image_features"], o["text_features"], o["logit_scale"]))
        outcomes.append({"clip": clip_norm, "expected": expected, "got": probe.value(), "stepped": math.hypot(*stepped),
                         "from_engine": probe.value() == engine.get_global_grad_norm()})
    return outcomes


@pytest.mark.parametrize("zero_stage,world_size,clip_norms", [(0, 1, (0.05, 0.0)), (0, 2, (0.05,)), (2, 2, (0.05,))])
def test_grad_norm_is_the_global_norm_before_clipping(zero_stage, world_size, clip_norms):
    outcomes = results(run_world(_grad_norm_vs_reference, world_size, zero_stage, clip_norms))
    for index, _ in enumerate(clip_norms):
        per_rank = [rank_outcomes[index] for rank_outcomes in outcomes]
        # the optimizer steps with whole gradients under ZeRO-0 and with this rank's partition under ZeRO 1-3
        stepped = ([o["stepped"] for o in per_rank] if zero_stage == 0
                   else [math.hypot(*(o["stepped"] for o in per_rank))])
        for outcome in per_rank:
            assert outcome["expected"] > 10 * 0.05  # clipping (at 0.05) was active: a clipped norm would show
            assert outcome["got"] == pytest.approx(outcome["expected"], rel=1e-4), outcome
            assert outcome["from_engine"]  # the norm the engine computed for clipping, not a second pass
            clipped = outcome["clip"] if outcome["clip"] > 0 else outcome["expected"]
            assert stepped == pytest.approx([clipped] * len(stepped), rel=1e-4), outcome  # it clipped with that norm


def brute_force(sim_NN: torch.Tensor, positive_NN: torch.Tensor, negative_NN: torch.Tensor) -> dict[str, float]:
    pos, neg, hardest, active, triplets = [], [], [], 0, 0
    for a in range(sim_NN.shape[0]):
        s_p, s_n = sim_NN[a][positive_NN[a]], sim_NN[a][negative_NN[a]]
        pos += s_p.tolist()
        neg += s_n.tolist()
        if len(s_n):
            hardest.append(s_n.max().item())
        for p in s_p:
            for n in s_n:
                triplets += 1
                active += int(n > p - MARGIN)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return {"pos_mean": mean(pos), "neg_mean": mean(neg), "hardest_neg_mean": mean(hardest),
            "active_triplet_fraction": active / triplets}


def _features(num_rows: int, dim: int = 6):
    gen = torch.Generator().manual_seed(5)
    image = torch.randn(num_rows, dim, generator=gen, dtype=torch.float64)
    text = torch.randn(num_rows, dim, generator=gen, dtype=torch.float64)
    return image, text + 0.8 * image, torch.randint(0, 3, (num_rows,), generator=gen)


SIZES = [3, 5]  # unequal local batches


def _similarity_in_world(rank, world_size):
    image, text, labels = _features(sum(SIZES))
    start = sum(SIZES[:rank])
    rows = slice(start, start + SIZES[rank])
    clip = global_similarity_stats(image[rows], text_nD=text[rows]).metrics("")
    label = global_similarity_stats(image[rows], labels_n=labels[rows]).metrics("")
    skipped = skipped_metrics({"bad_image": 2} if rank == 0 else {"bad_image": 1, "missing_field": 3})
    return {"clip": clip, "label": label, "skipped": skipped}


def test_similarity_stats_over_two_ranks_equal_brute_force_and_skips_are_summed():
    image, text, labels = _features(sum(SIZES))
    n = sum(SIZES)
    eye = torch.eye(n, dtype=torch.bool)
    clip_want = brute_force(F.normalize(image, dim=1) @ F.normalize(text, dim=1).T, eye, ~eye)
    unit = F.normalize(image, dim=1)
    same = labels[:, None] == labels[None, :]
    label_want = brute_force(unit @ unit.T, same & ~eye, ~same)
    for outcome in results(run_world(_similarity_in_world, 2)):
        for got, want in ((outcome["clip"], clip_want), (outcome["label"], label_want)):
            assert got.keys() == want.keys()
            for key in want:
                assert got[key] == pytest.approx(want[key], abs=1e-9), (key, got, want)
        assert outcome["skipped"] == {"data/skipped_total": 6, "data/skipped/bad_image": 3,
                                      "data/skipped/missing_field": 3}


def test_skipped_counts_of_a_real_loader_on_dirty_shards(tmp_path):
    from dmlscale.data.pipeline import make_loader
    from tests.data.loader_shards import write_dirty_shards

    dirty = write_dirty_shards(tmp_path)
    loader = make_loader(dirty["pattern"], batch_size=1, max_image_pixels=1_000_000, max_skip_fraction=0.5,
                         skip_check_after=1000, shuffle_buffer=5)
    for _ in loader:
        pass
    want = {"data/skipped_total": sum(dirty["bad"].values()),
            **{f"data/skipped/{reason}": num for reason, num in dirty["bad"].items()}}
    assert sum(dirty["bad"].values()) > 0 and skipped_metrics(loader.skipped) == want
