"""The loss's own parameters trained beside a DeepSpeed engine (train/loss_parameters.py).

The reference is one process holding the whole class-weight matrix: ArcFaceLoss (PML's numbers) inside a
DistributedLoss, its W trained by LossParameters. Against it: the same loss at 2 and 3 ranks (replicated W,
gradients averaged) and the class-sharded ShardedArcFaceLoss at 1, 2 and 3 ranks (each rank owns a block,
no averaging), with unequal local batches, DeepSpeed ZeRO-0 and ZeRO-2, gradient clipping active.
"""

from __future__ import annotations

import pytest
import torch

from dmlscale.distributed.sharded_classification import OwnedBlock, ShardedArcFaceLoss, class_block, seeded_columns
from dmlscale.train.loss_parameters import LossParameters
from dmlscale.train.schedule import cosine_factor
from tests.distributed.launch import results, run_world

NUM_CLASSES, DIM, IN_DIM, STEPS = 10, 8, 12, 3
LR, CLIP = 1e-2, 1.0
SIZES = {1: [12], 2: [5, 7], 3: [3, 4, 5]}  # local batch per rank: the same 12 global rows every step


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    return torch.randn(12, IN_DIM, generator=generator), torch.randint(0, NUM_CLASSES, (12,), generator=generator)


def _train(rank: int, world_size: int, sharded: bool, zero_stage: int) -> dict:
    from dmlscale.distributed import DistributedLoss
    from dmlscale.losses import ArcFaceLoss
    from dmlscale.train.engine import build_engine, engine_contrastive_step
    from tests.train.helpers import full_params

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(IN_DIM, 16), torch.nn.Tanh(), torch.nn.Linear(16, DIM))
    if sharded:
        loss = ShardedArcFaceLoss(NUM_CLASSES, DIM, data_parallel=True, init_seed=0)
    else:
        pure = ArcFaceLoss(NUM_CLASSES, DIM)
        with torch.no_grad():
            pure.W.copy_(seeded_columns(0, DIM, 0, NUM_CLASSES))
        loss = DistributedLoss(pure)
    engine = build_engine(model, zero_stage=zero_stage, precision="fp32", lr=LR, weight_decay=0.0,
                          gradient_clipping=CLIP, warmup_steps=1, total_steps=STEPS, micro_batch_size=4)
    params = LossParameters(loss, lr=LR, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, grad_clip=CLIP,
                            world_size=world_size)
    start = sum(SIZES[world_size][:rank])
    rows = slice(start, start + SIZES[world_size][rank])
    norms = []
    for step in range(STEPS):
        inputs, labels = global_batch(step)
        engine_contrastive_step(engine, [inputs[rows]], lambda chunk: {"embeddings": engine(chunk)},
                                lambda out: loss(out["embeddings"], labels[rows]))
        params.step(schedule_factor=cosine_factor(step, warmup_steps=1, total_steps=STEPS), skip=False)
        norms.append(params.last_grad_norm)
    weight = loss.gather_full_weight() if sharded else loss.loss.W.detach().clone()
    return {"model": full_params(engine), "W": weight, "norms": norms, "owned": list(params.owned)}


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [0, 2])
def test_class_weights_train_exactly_at_any_world_size_sharded_or_not(zero_stage):
    runs = {}
    for world_size in (1, 2, 3):
        runs[world_size] = results(run_world(_both, world_size, zero_stage))
    reference = runs[1][0][False]
    initial = seeded_columns(0, DIM, 0, NUM_CLASSES)
    assert (reference["W"] - initial).abs().max() > 10 * LR * 0.1  # the class weights moved: not vacuous
    assert reference["norms"][0] > CLIP  # the loss parameters' clipping was active
    assert reference["owned"] == [] and runs[1][0][True]["owned"] == ["W"]
    for world_size, per_rank in runs.items():
        for sharded in (False, True):
            for rank, outcome in enumerate(per_rank):
                got = outcome[sharded]
                where = (world_size, sharded, rank)
                # fp32: the ranks sum gradients in another order; Adam's normalisation can move a weight by a
                # share of lr where a gradient is near zero
                torch.testing.assert_close(got["W"], reference["W"], atol=5e-3 * LR, rtol=0, msg=str(where))
                for name, value in reference["model"].items():
                    torch.testing.assert_close(got["model"][name], value, atol=5e-3 * LR, rtol=0,
                                               msg=f"{where} {name}")
                assert got["norms"] == pytest.approx(reference["norms"], rel=1e-4), where


def _both(rank: int, world_size: int, zero_stage: int) -> dict:
    return {sharded: _train(rank, world_size, sharded, zero_stage) for sharded in (False, True)}


def test_seeded_columns_do_not_depend_on_how_the_classes_are_split():
    num_classes = 9000  # crosses two seeded blocks of 4096 classes
    full = seeded_columns(3, 4, 0, num_classes)
    assert full.shape == (4, num_classes) and abs(float(full.mean())) < 0.05 and 0.9 < float(full.std()) < 1.1
    for world_size in (2, 3, 7):
        blocks = [seeded_columns(3, 4, *class_block(num_classes, world_size, r)) for r in range(world_size)]
        assert torch.equal(torch.cat(blocks, dim=1), full)
    assert not torch.equal(seeded_columns(4, 4, 0, 10), full[:, :10])  # another seed, other weights
    assert torch.equal(ShardedArcFaceLoss(20, 4, init_seed=3).W.detach(), seeded_columns(3, 4, 0, 20))


class RowBlocks(torch.nn.Module):
    """A sharded layout other than the margin-softmax one: classes along dim 0, two rows per class (as
    proxies with sub-centres would be), all classes owned at world size 1."""

    def __init__(self):
        super().__init__()
        self.P = torch.nn.Parameter(torch.zeros(2 * NUM_CLASSES, DIM))

    def owned_blocks(self) -> dict[str, OwnedBlock]:
        return {"P": OwnedBlock(0, NUM_CLASSES, NUM_CLASSES, dim=0, per_class=2)}


@pytest.mark.parametrize("layout", ["columns", "rows-2-per-class"])
def test_a_checkpoint_saved_by_three_ranks_resumes_on_one(layout):
    """Three saved blocks (values and Adam moments) are cut and joined into one rank's whole range."""
    loss = ShardedArcFaceLoss(NUM_CLASSES, DIM, init_seed=0) if layout == "columns" else RowBlocks()
    name, param = next(iter(loss.named_parameters()))
    params = LossParameters(loss, lr=LR, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, grad_clip=0.0, world_size=1)
    block = params.owned[name]
    full = {key: torch.randn(param.shape) for key in ("value", "exp_avg", "exp_avg_sq")}
    saved = {}
    for rank in range(3):
        start, end = class_block(NUM_CLASSES, 3, rank)
        part = {key: value.narrow(block.dim, start * block.per_class, (end - start) * block.per_class)
                for key, value in full.items()}
        saved[rank] = {name: {"block": (start, end), "step": 7.0, **part}}
    read = []
    params.load_state_dict(saved[0], saved_world_size=3, saved_state_of_rank=lambda r: read.append(r) or saved[r])
    assert sorted(read) == [1, 2]  # rank 0's state came with the call
    assert torch.equal(param.detach(), full["value"])
    state = params.optimizer.state[param]
    assert torch.equal(state["exp_avg"], full["exp_avg"]) and torch.equal(state["exp_avg_sq"], full["exp_avg_sq"])
    assert float(state["step"]) == 7.0
    # the round trip: what it saves is what it loaded
    again = params.state_dict()[name]
    assert again["block"] == (0, NUM_CLASSES) and torch.equal(again["value"], full["value"])


def test_a_checkpoint_that_does_not_fit_the_loss_is_refused_by_name():
    loss = ShardedArcFaceLoss(NUM_CLASSES, DIM, init_seed=0)
    params = LossParameters(loss, lr=LR, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, grad_clip=0.0, world_size=1)
    with pytest.raises(ValueError, match="holds no loss parameters; this run's loss trains \\['W'\\]"):
        params.load_state_dict(None, saved_world_size=1, saved_state_of_rank=lambda r: None)
    wrong = {"W": {"block": (0, NUM_CLASSES), "step": 1.0, "value": torch.zeros(DIM + 1, NUM_CLASSES),
                   "exp_avg": torch.zeros(DIM + 1, NUM_CLASSES), "exp_avg_sq": torch.zeros(DIM + 1, NUM_CLASSES)}}
    with pytest.raises(ValueError, match=r"'W': checkpoint shape \(9, 10\), this run's \(8, 10\)"):
        params.load_state_dict(wrong, saved_world_size=1, saved_state_of_rank=lambda r: None)
    none = LossParameters(torch.nn.Identity(), lr=LR, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, grad_clip=0.0,
                          world_size=1)
    assert not none and none.state_dict() is None
    with pytest.raises(ValueError, match="holds loss parameters \\['W'\\], but this run's loss has none"):
        none.load_state_dict(wrong, saved_world_size=1, saved_state_of_rank=lambda r: None)
