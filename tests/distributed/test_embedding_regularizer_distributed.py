"""PML's embedding_regularizer across 2 real gloo ranks (unequal local batches): DistributedLoss and
DistributedCrossBatchMemory report the single-process loss on the concatenated batch, regularizer included,
and each rank's rows get W times their single-process gradient (class weights: the ranks' gradients sum to
W times the single-process one). ZeroMeanRegularizer is not a sum over rows, so a per-rank term would differ.

Legend: N global rows, D embedding size, W world size.
"""

import torch

from dmlscale import losses, regularizers
from dmlscale.distributed import DistributedCrossBatchMemory, DistributedLoss
from dmlscale.memory import CrossBatchMemory
from tests.distributed.launch import results, run_world

DIM, NUM_CLASSES, SIZES = 5, 4, [7, 4]

CASES = {
    "triplet-lp": lambda: losses.TripletMarginLoss(margin=0.3, embedding_regularizer=regularizers.LpRegularizer(),
                                                   embedding_reg_weight=0.5),
    "contrastive-zero-mean": lambda: losses.ContrastiveLoss(
        embedding_regularizer=regularizers.ZeroMeanRegularizer(), embedding_reg_weight=2.0),
    "arcface-lp": lambda: losses.ArcFaceLoss(NUM_CLASSES, DIM, scale=8,
                                             embedding_regularizer=regularizers.LpRegularizer(p=1, power=2)),
    "ntxent-do-nothing": lambda: losses.NTXentLoss(
        reducer=losses.DoNothingReducer(), embedding_regularizer=regularizers.ZeroMeanRegularizer()),
}


def build(name):
    torch.manual_seed(0)  # the same class weights on every rank and in the single process
    return CASES[name]().double()


def global_batch(step: int = 0):
    gen = torch.Generator().manual_seed(11 + step)
    emb_ND = torch.randn(sum(SIZES), DIM, generator=gen, dtype=torch.float64)
    return emb_ND, torch.randint(0, NUM_CLASSES, (sum(SIZES),), generator=gen)


def run_case(loss_fn, emb, labels):
    """(value, embedding gradient, parameter gradients); of the embedding_reg_loss term alone under a
    DoNothingReducer (the other sub-losses of the dict are this rank's own)."""
    emb = emb.detach().clone().requires_grad_(True)
    out = loss_fn(emb, labels)
    total = out["embedding_reg_loss"]["losses"] if isinstance(out, dict) else out
    total.backward()
    return total.item(), emb.grad.clone(), [p.grad.clone() for p in loss_fn.parameters() if p.grad is not None]


def make_memory():
    return CrossBatchMemory(build("contrastive-zero-mean"), DIM, memory_size=16)


def _rank_run(rank, world_size):
    start, stop = sum(SIZES[:rank]), sum(SIZES[: rank + 1])
    emb, labels = global_batch()
    out = {name: run_case(DistributedLoss(build(name)), emb[start:stop], labels[start:stop]) for name in CASES}
    memory = DistributedCrossBatchMemory(make_memory())
    out["memory"] = []
    for step in range(2):
        emb, labels = global_batch(step + 1)
        out["memory"].append(run_case(memory, emb[start:stop], labels[start:stop]))
    return out


def test_embedding_regularizer_is_exact_across_two_ranks():
    per_rank = results(run_world(_rank_run, len(SIZES)))
    world_size = len(SIZES)
    emb, labels = global_batch()
    expected = {name: run_case(build(name), emb, labels) for name in CASES}
    memory = make_memory()
    expected["memory"] = [run_case(memory, *global_batch(step + 1)) for step in range(2)]
    for name, single in expected.items():
        for step, (value, grad, params) in enumerate(single if name == "memory" else [single]):
            assert value > 1e-3, f"{name}: the test needs a non-zero loss"
            param_sums = [torch.zeros_like(p) for p in params]
            for rank, outcome in enumerate(per_rank):
                got_value, got_grad, got_params = outcome[name][step] if name == "memory" else outcome[name]
                assert abs(got_value - value) <= 1e-10, f"{name} step {step} rank {rank}: {got_value} != {value}"
                start, stop = sum(SIZES[:rank]), sum(SIZES[: rank + 1])
                diff = (got_grad - world_size * grad[start:stop]).abs().max().item()
                assert diff <= 1e-10, f"{name} step {step} rank {rank}: gradient diff {diff:.2e}"
                param_sums = [s + g for s, g in zip(param_sums, got_params)]
            for got, want in zip(param_sums, params):
                assert (got - world_size * want).abs().max().item() <= 1e-10, f"{name}: class weight gradient"


def test_a_per_rank_regularizer_would_differ():
    """ZeroMeanRegularizer of each rank's rows, averaged, is not the regularizer of the global batch: the
    gathering above is needed (this keeps the case above able to fail)."""
    emb, _ = global_batch()
    reg = regularizers.ZeroMeanRegularizer()
    per_rank = [reg(emb[sum(SIZES[:r]): sum(SIZES[: r + 1])]) for r in range(len(SIZES))]
    assert abs(float(sum(per_rank) / len(SIZES)) - float(reg(emb))) > 1e-3
