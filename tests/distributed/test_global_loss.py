"""DistributedLoss / DistributedMiner / distributed CLIP and SigLIP on real gloo processes under DDP:
parameter gradients and reported loss equal one process on the concatenated global batch (float64,
1e-10), for world sizes 1-4 with equal and unequal local batches."""

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from dmlscale import losses, miners, reducers
from dmlscale.distributed import DistributedClipLoss, DistributedCrossBatchMemory, DistributedLoss, DistributedSigLipLoss
from dmlscale.memory import CrossBatchMemory
from tests.distributed.launch import results, run_world

D_IN, D_OUT, NUM_CLASSES = 6, 5, 4

# name -> (loss factory, miner factory or None); deterministic losses and miners of the core library
CASES = {
    "contrastive": (lambda: losses.ContrastiveLoss(pos_margin=0.2, neg_margin=1.2), None),
    "contrastive-mean": (lambda: losses.ContrastiveLoss(reducer=reducers.MeanReducer()), None),
    "contrastive-sum": (lambda: losses.ContrastiveLoss(reducer=reducers.SumReducer()), None),
    "triplet": (lambda: losses.TripletMarginLoss(margin=0.3), None),
    "triplet-swap-cosine": (lambda: losses.TripletMarginLoss(margin=0.2, swap=True,
                                                             distance=losses_distances().CosineSimilarity()), None),
    "ntxent": (lambda: losses.NTXentLoss(temperature=0.5), None),
    "supcon": (lambda: losses.SupConLoss(), None),
    "multisim": (lambda: losses.MultiSimilarityLoss(), None),
    "circle": (lambda: losses.CircleLoss(), None),
    "nca": (lambda: losses.NCALoss(), None),
    "batch-all": (lambda: losses.BatchAllTripletLoss(), None),
    "soft-margin": (lambda: losses.SoftMarginTripletLoss(), None),
    "hard-pair": (lambda: losses.HardPairLoss(), None),
    "bin-deviance": (lambda: losses.BinomialDevianceLoss(), None),
    "batch-hard-loss": (lambda: losses.BatchHardTripletLoss(margin=0.3), None),
    "lifted": (lambda: losses.LiftedStructureLoss(), None),
    "generalized-lifted": (lambda: losses.GeneralizedLiftedStructureLoss(neg_margin=1.2, pos_margin=0.1), None),
    "angular": (lambda: losses.AngularLoss(alpha=35), None),
    "margin": (lambda: losses.MarginLoss(margin=0.2, beta=0.8), None),
    "npairs": (lambda: losses.NPairsLoss(), None),
    "tuplet": (lambda: losses.TupletMarginLoss(scale=16), None),
    "snr-contrastive": (lambda: losses.SignalToNoiseRatioContrastiveLoss(pos_margin=0.2, neg_margin=1.2), None),
    "fast-ap": (lambda: losses.FastAPLoss(num_bins=6), None),
    "ranked-list": (lambda: losses.RankedListLoss(margin=0.4, Tn=4), None),
    "tcm": (lambda: losses.ThresholdConsistentMarginLoss(margin_plus=0.5, margin_minus=0.0), None),
    "pnp": (lambda: losses.PNPLoss(anneal=0.1, variant="Ds"), None),
    "smooth-ap": (lambda: losses.SmoothAPLoss(temperature=0.1), None),
    "instance": (lambda: losses.InstanceLoss(gamma=4), None),
    "triplet+batch-hard": (lambda: losses.TripletMarginLoss(margin=0.3), lambda: miners.BatchHardMiner()),
    "triplet+easy-hard": (lambda: losses.TripletMarginLoss(margin=0.3),
                          lambda: miners.BatchEasyHardMiner(pos_strategy="easy", neg_strategy="hard")),
    "triplet+semihard": (lambda: losses.TripletMarginLoss(margin=0.3),
                         lambda: miners.TripletMarginMiner(margin=0.5, type_of_triplets="semihard")),
    "contrastive+pair-margin": (lambda: losses.ContrastiveLoss(), lambda: miners.PairMarginMiner()),
    "multisim+ms-miner": (lambda: losses.MultiSimilarityLoss(), lambda: miners.MultiSimilarityMiner()),
    "ntxent+pair-margin": (lambda: losses.NTXentLoss(temperature=0.3),
                           lambda: miners.PairMarginMiner(pos_margin=0.3, neg_margin=0.9)),
    "triplet+angular": (lambda: losses.TripletMarginLoss(margin=0.3), lambda: miners.AngularMiner(angle=25)),
    "triplet-class-weighted": (lambda: losses.TripletMarginLoss(
        margin=0.3, reducer=reducers.ClassWeightedReducer([0.5, 2.0, 1.0, 1.5])), None),
    "nca-class-weighted": (lambda: losses.NCALoss(reducer=reducers.ClassWeightedReducer([0.5, 2.0, 1.0, 1.5])), None),
    "contrastive-per-anchor": (lambda: losses.ContrastiveLoss(reducer=reducers.PerAnchorReducer()), None),
    "ntxent-per-anchor-sum": (lambda: losses.NTXentLoss(
        temperature=0.5, reducer=reducers.PerAnchorReducer(reducers.SumReducer())), None),
}


# losses that sample at random: each rank draws its own samples, so only the agreement of the reported
# global value across ranks (and its finiteness) can be checked against nothing but itself
RANDOM_CASES = {
    "triplet-sampled": lambda: DistributedLoss(losses.TripletMarginLoss(margin=0.5, triplets_per_anchor=2)),
    "distance-weighted": lambda: DistributedLoss(losses.DistanceWeightedMarginLoss()),
    "gaussian-negatives": lambda: DistributedLoss(losses.GaussianWeightedNegativeLoss(seed=0)),
}


def losses_distances():
    import dmlscale.distances as distances
    return distances


def global_batch(total: int):
    gen = torch.Generator().manual_seed(42)
    x_ND = torch.randn(total, D_IN, generator=gen, dtype=torch.float64)
    labels_N = torch.arange(total) % NUM_CLASSES
    labels_N = labels_N[torch.randperm(total, generator=gen)]
    text_ND = torch.randn(total, D_IN, generator=gen, dtype=torch.float64)
    return x_ND, labels_N, text_ND


class Towers(torch.nn.Module):
    """An image tower, a text tower and learnable logit scale/bias of shape [1] (DeepSpeed-safe)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image = torch.nn.Linear(D_IN, D_OUT).double()
        self.text = torch.nn.Linear(D_IN, D_OUT).double()
        self.logit_scale = torch.nn.Parameter(torch.tensor([2.3], dtype=torch.float64))
        self.logit_bias = torch.nn.Parameter(torch.tensor([-1.5], dtype=torch.float64))
        self.center_loss = losses.CenterLoss(num_classes=NUM_CLASSES, embedding_size=D_OUT).double()

    def forward(self, x, text):
        img = torch.nn.functional.normalize(self.image(x), dim=1)
        txt = torch.nn.functional.normalize(self.text(text), dim=1)
        return self.image(x), img, txt, self.logit_scale.exp(), self.logit_bias


def case_loss(name, model, x, labels, text, distributed):
    module = model.module if distributed else model
    emb, img, txt, scale, bias = model(x, text)
    # under DDP every parameter must take part in the gradient reduction: unused ones join with weight 0
    unused = {"img": 0 * (scale.sum() + bias.sum()), "txt": 0 * txt.sum(),
              "centres": 0 * sum(p.sum() for p in module.center_loss.parameters())}
    if name in ("clip", "siglip", "clip-tiled"):
        tiled = {"tiled": True, "tile_size": 3}  # tiles smaller than every local batch
        ours = {"clip": (DistributedClipLoss(), losses.ClipLoss()),
                "siglip": (DistributedSigLipLoss(), losses.SigLipLoss()),
                "clip-tiled": (DistributedClipLoss(**tiled), losses.ClipLoss(tiled=False))}
        loss = ours[name][0 if distributed else 1](img, txt, scale, bias)
        return loss + (unused["centres"] if distributed else 0)
    if name == "center":  # a loss with parameters of its own and no reference batch
        loss = (DistributedLoss(module.center_loss) if distributed else module.center_loss)(emb, labels)
        return loss + (unused["img"] + unused["txt"] if distributed else 0)
    make_loss, make_miner = CASES[name]
    loss_fn, miner = make_loss(), (make_miner() if make_miner else None)
    if distributed:
        return DistributedLoss(loss_fn, miner=miner)(emb, labels) + sum(unused.values())
    return loss_fn(emb, labels, miner(emb, labels) if miner else None)


def grads_after(name, model, x, labels, text, distributed):
    model.zero_grad()
    loss = case_loss(name, model, x, labels, text, distributed)
    loss.backward()
    module = model.module if distributed else model
    return loss.item(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in module.parameters()]


ALL_CASES = list(CASES) + ["clip", "siglip", "clip-tiled", "center"]


def _rank_run(rank, world_size, sizes):
    x_ND, labels_N, text_ND = global_batch(sum(sizes))
    start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
    model = DistributedDataParallel(Towers())
    out = {name: grads_after(name, model, x_ND[start:stop], labels_N[start:stop], text_ND[start:stop], True)
           for name in ALL_CASES}
    emb = model.module.image(x_ND[start:stop]).detach()
    out["random"] = {name: make()(emb, labels_N[start:stop]).item() for name, make in RANDOM_CASES.items()}
    for key, make in (("batch-statistics", lambda: DistributedLoss(losses.IntraPairVarianceLoss())),
                      ("batch-statistics-memory", lambda: DistributedCrossBatchMemory(
                          CrossBatchMemory(losses.IntraPairVarianceLoss(), D_OUT, memory_size=64)))):
        try:  # a loss with whole-batch statistics runs on one process and is refused on more
            make()(emb, labels_N[start:stop])
            out[key] = "ran"
        except ValueError as error:
            out[key] = str(error)
    return out


@pytest.mark.parametrize("sizes", [[9], [6, 6], [8, 5], [7, 3, 5], [5, 5, 5, 5], [4, 9, 2, 6]],
                         ids=["w1", "w2-equal", "w2-unequal", "w3-unequal", "w4-equal", "w4-unequal"])
def test_distributed_equals_single_process(sizes):
    per_rank = results(run_world(_rank_run, len(sizes), sizes))
    x_ND, labels_N, text_ND = global_batch(sum(sizes))
    expected = {name: grads_after(name, Towers(), x_ND, labels_N, text_ND, False) for name in ALL_CASES}
    for name in RANDOM_CASES:
        values = [outcome["random"][name] for outcome in per_rank]
        assert all(v == values[0] for v in values) and 0 < values[0] < float("inf"), (name, values)
    for outcome in per_rank:
        for key in ("batch-statistics", "batch-statistics-memory"):
            assert ("cannot split IntraPairVarianceLoss" in outcome[key]) == (len(sizes) > 1), outcome[key]
    nontrivial = 0
    for name, (value, grads) in expected.items():
        nontrivial += value != 0
        for rank, outcome in enumerate(per_rank):
            got_value, got_grads = outcome[name]
            assert abs(got_value - value) <= 1e-10, f"{name} rank {rank}: loss {got_value} != {value}"
            for i, (g, e) in enumerate(zip(got_grads, grads)):
                diff = (g - e).abs().max().item()
                assert diff <= 1e-10, f"{name} rank {rank} param {i}: grad diff {diff:.2e}"
    assert nontrivial == len(ALL_CASES)


def test_single_process_wrappers_keep_dtype_and_equal_the_plain_loss():
    gen = torch.Generator().manual_seed(1)
    emb = torch.randn(16, 8, generator=gen, requires_grad=True)
    labels = torch.arange(16) % 4
    plain = losses.TripletMarginLoss(margin=0.3)(emb, labels)
    wrapped = DistributedLoss(losses.TripletMarginLoss(margin=0.3))(emb, labels)
    assert wrapped.dtype == torch.float32 and plain.item() > 0
    assert abs(wrapped.item() - plain.item()) < 1e-6
    img, txt = torch.nn.functional.normalize(torch.randn(2, 16, 8, generator=gen), dim=2)
    scale, bias = torch.tensor([10.0]), torch.tensor([-5.0])
    for ours, ref in [(DistributedClipLoss()(img, txt, scale, bias), losses.ClipLoss()(img, txt, scale, bias)),
                      (DistributedSigLipLoss()(img, txt, scale, bias), losses.SigLipLoss()(img, txt, scale, bias))]:
        assert ours.dtype == torch.float32 and abs(ours.item() - ref.item()) < 1e-5
