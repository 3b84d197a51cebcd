"""CrossBatchMemory equals PML's over several steps (queue contents, loss values, gradients), incl.
enqueue_mask and a wrapping ring; bad inputs are named."""

import pytest
import torch

from dmlscale import losses, miners
from dmlscale.memory import CrossBatchMemory
from tests.parity import assert_close

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

DIM = 6
LOSSES = {
    "contrastive": (lambda: losses.ContrastiveLoss(), lambda: pml_losses.ContrastiveLoss()),
    "triplet": (lambda: losses.TripletMarginLoss(margin=0.3), lambda: pml_losses.TripletMarginLoss(margin=0.3)),
    "ntxent": (lambda: losses.NTXentLoss(temperature=0.2), lambda: pml_losses.NTXentLoss(temperature=0.2)),
    "supcon": (lambda: losses.SupConLoss(), lambda: pml_losses.SupConLoss()),
    "multisim": (lambda: losses.MultiSimilarityLoss(), lambda: pml_losses.MultiSimilarityLoss()),
    "generalized-lifted": (lambda: losses.GeneralizedLiftedStructureLoss(),
                           lambda: pml_losses.GeneralizedLiftedStructureLoss()),
    "margin": (lambda: losses.MarginLoss(beta=0.9), lambda: pml_losses.MarginLoss(beta=0.9)),
    "tuplet": (lambda: losses.TupletMarginLoss(scale=16), lambda: pml_losses.TupletMarginLoss(scale=16)),
    "snr-contrastive": (lambda: losses.SignalToNoiseRatioContrastiveLoss(),
                        lambda: pml_losses.SignalToNoiseRatioContrastiveLoss()),
    "intra-pair-variance": (lambda: losses.IntraPairVarianceLoss(), lambda: pml_losses.IntraPairVarianceLoss()),
}


def batches(seed, sizes):
    gen = torch.Generator().manual_seed(seed)
    for n in sizes:
        yield torch.randn(n, DIM, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


def run_steps(cbm, sizes, with_mask=False):
    out = []
    for step, (emb, labels) in enumerate(batches(0, sizes)):
        emb = emb.clone().requires_grad_(True)
        mask = (torch.arange(len(labels)) % 2 == 0) if with_mask else None
        loss = cbm(emb, labels, enqueue_mask=mask)
        loss.backward()
        out.append((loss.detach(), emb.grad.clone(), cbm.embedding_memory.clone(), cbm.label_memory.clone()))
    return out


@pytest.mark.parametrize("with_mask", [False, True], ids=["plain", "enqueue_mask"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_matches_pml_over_steps_with_wrapping_ring(name, with_mask):
    ours_loss, pml_loss = LOSSES[name]
    sizes = [7, 5, 8, 6, 7]  # 33 rows through a ring of 16: wraps twice
    ours = run_steps(CrossBatchMemory(ours_loss(), DIM, memory_size=16), sizes, with_mask)
    theirs = run_steps(pml_losses.CrossBatchMemory(pml_loss(), DIM, memory_size=16), sizes, with_mask)
    nonzero = 0
    for step, ((v1, g1, m1, l1), (v2, g2, m2, l2)) in enumerate(zip(ours, theirs)):
        assert_close(v1, v2, what=f"{name} step {step} loss")
        assert_close(g1, g2, what=f"{name} step {step} gradient")
        assert torch.equal(m1, m2.to(m1.dtype)) and torch.equal(l1, l2)
        nonzero += float(v1) != 0
    assert nonzero >= 3


def test_batch_hard_miner_matches_pml():
    sizes = [8, 8, 8]
    ours = run_steps(CrossBatchMemory(losses.TripletMarginLoss(margin=0.3), DIM, memory_size=20,
                                      miner=miners.BatchHardMiner()), sizes)
    theirs = run_steps(pml_losses.CrossBatchMemory(pml_losses.TripletMarginLoss(margin=0.3), DIM, memory_size=20,
                                                   miner=pml_miners.BatchHardMiner()), sizes)
    for (v1, g1, *_), (v2, g2, *_) in zip(ours, theirs):
        assert_close(v1, v2)
        assert_close(g1, g2, what="gradient")


def test_miner_never_pairs_a_sample_with_its_own_slot():
    # an easy-positive miner would pick the sample's own slot (distance 0) if it were not excluded
    cbm = CrossBatchMemory(losses.TripletMarginLoss(margin=10.0), DIM, memory_size=32,
                           miner=miners.BatchEasyHardMiner(pos_strategy="easy", neg_strategy="hard"))
    emb, labels = next(batches(3, [10]))
    slots = cbm.enqueue(emb, labels)
    a, p = cbm.miner(emb, labels, *cbm.filled_memory(), query_ref_index=slots)[:2]
    assert len(a) > 0 and not torch.any(slots[a] == p)


def test_bad_inputs_are_named():
    cbm = CrossBatchMemory(losses.ContrastiveLoss(), DIM, memory_size=4)
    with pytest.raises(ValueError, match="5 rows into a memory of 4"):
        cbm(torch.randn(5, DIM), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="size 3 but embedding_size=6"):
        cbm(torch.randn(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="mutually exclusive"):
        cbm(torch.randn(2, DIM), torch.zeros(2, dtype=torch.long), indices_tuple=(torch.tensor([0]),) * 3,
            enqueue_mask=torch.tensor([True, False]))
    with pytest.raises(ValueError, match="memory_size"):
        CrossBatchMemory(losses.ContrastiveLoss(), DIM, memory_size=0)
    with pytest.raises(ValueError, match="CenterLoss"):
        CrossBatchMemory(losses.CenterLoss(num_classes=3, embedding_size=DIM), DIM)


def test_batch_indices_tuple_is_scored_against_the_slots_of_those_rows():
    emb, labels = next(batches(4, [6]))
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    pairs = (torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([0, 2]), torch.tensor([4, 5]))
    cbm = CrossBatchMemory(losses.ContrastiveLoss(), DIM, memory_size=10)
    cbm.enqueue(*next(batches(5, [7])))  # the batch lands in slots 7, 8, 9, 0, 1, 2
    got = cbm(emb, labels, indices_tuple=pairs)
    slots = torch.tensor([7, 8, 9, 0, 1, 2])
    mapped = tuple(x if i in (0, 2) else slots[x] for i, x in enumerate(pairs))
    expected = losses.ContrastiveLoss()(emb, labels, mapped, *cbm.filled_memory(), query_ref_index=slots)
    assert got.item() > 0 and abs(got.item() - expected.item()) < 1e-12


def test_pml_queue_api_curr_batch_idx_add_to_memory_and_supported_losses():
    ours_cbm = CrossBatchMemory(losses.ContrastiveLoss(), DIM, memory_size=10)
    pml_cbm = pml_losses.CrossBatchMemory(pml_losses.ContrastiveLoss(), DIM, memory_size=10)
    for emb, labels in batches(6, [4, 5, 3]):  # the third wraps: slots 9, 0, 1
        emb = emb.float()  # PML's add_to_memory writes into its float32 buffer as is
        ours_cbm.add_to_memory(emb, labels, len(emb))
        pml_cbm.add_to_memory(emb, labels, len(emb))
        assert torch.equal(ours_cbm.curr_batch_idx, pml_cbm.curr_batch_idx)
        assert ours_cbm.queue_idx == pml_cbm.queue_idx and ours_cbm.has_been_filled == pml_cbm.has_been_filled
        assert torch.equal(ours_cbm.embedding_memory, pml_cbm.embedding_memory)
    assert ours_cbm.curr_batch_idx.tolist() == [9, 0, 1]
    emb, labels = next(batches(7, [6]))
    mask = torch.tensor([True, False, True, False, True, True])
    ours_cbm(emb, labels, enqueue_mask=mask)
    pml_cbm(emb, labels, enqueue_mask=mask)
    assert torch.equal(ours_cbm.curr_batch_idx, pml_cbm.curr_batch_idx)
    with pytest.raises(ValueError, match="batch_size=3 but there are 4 embeddings"):
        ours_cbm.add_to_memory(emb[:4], labels[:4], 3)
    assert set(pml_losses.CrossBatchMemory.supported_losses()) <= set(CrossBatchMemory.supported_losses())
    for name in CrossBatchMemory.supported_losses():
        if hasattr(losses, name):
            CrossBatchMemory.check_loss_support(name)
            CrossBatchMemory(getattr(losses, name)(), DIM)  # every supported loss dmlscale has is accepted
    with pytest.raises(ValueError, match="not supported for CenterLoss"):
        CrossBatchMemory.check_loss_support("CenterLoss")


def test_nca_leaves_each_query_out_of_its_own_softmax_where_pml_keeps_it():
    """Deliberate difference (a fix): NCA inside PML's CrossBatchMemory keeps each query's own slot in its
    softmax (distance 0, same class), so the sample counts as its own neighbour; PML's plain NCALoss leaves
    it out. Ours leaves it out in both, so on a first batch the memory gives plain NCA's value."""
    from pytorch_metric_learning.losses import NCALoss as PMLNCALoss

    emb, labels = next(batches(0, [7]))
    ours_value = CrossBatchMemory(losses.NCALoss(), DIM, memory_size=16)(emb, labels)
    pml_value = pml_losses.CrossBatchMemory(PMLNCALoss(), DIM, memory_size=16)(emb, labels)
    assert ours_value.item() == pytest.approx(0.905454434973632, rel=1e-12)
    assert pml_value.item() == pytest.approx(0.3598889242113022, rel=1e-12)
    assert_close(ours_value, PMLNCALoss()(emb, labels))  # PML's own NCA without a memory
    assert_close(pml_value, PMLNCALoss()(emb, labels, ref_emb=emb.clone(), ref_labels=labels))  # self kept
    # later steps: each row's softmax runs over every filled slot but its own (a loop reference)
    cbm = CrossBatchMemory(losses.NCALoss(), DIM, memory_size=16)
    for emb, labels in batches(1, [7, 6, 5]):
        value = cbm(emb, labels)
    mem_emb, mem_labels = cbm.filled_memory()
    normed = torch.nn.functional.normalize
    expected = []
    for i, slot in enumerate(cbm.curr_batch_idx.tolist()):
        others = [j for j in range(len(mem_emb)) if j != slot]
        closeness = -((normed(emb[i:i + 1]) - normed(mem_emb[others])) ** 2).sum(dim=1)
        prob = torch.softmax(closeness, dim=0)[mem_labels[others] == labels[i]].sum()
        expected.append(-torch.log(prob))
    assert_close(value, torch.stack(expected).mean())


# losses whose ref_emb PML refuses (or gets wrong) but ours takes: they run against the memory, and each
# step's value is the pure loss of the queries against the filled memory with their own slots excluded
MEMORY_ONLY_OURS = {
    "lifted": lambda: losses.LiftedStructureLoss(),
    "npairs": lambda: losses.NPairsLoss(),
    "fast-ap": lambda: losses.FastAPLoss(),
    "ranked-list": lambda: losses.RankedListLoss(margin=0.4, Tn=4),
    "pnp": lambda: losses.PNPLoss(anneal=0.1),
    "smooth-ap": lambda: losses.SmoothAPLoss(temperature=0.1),
    "instance": lambda: losses.InstanceLoss(gamma=4),
    "angular": lambda: losses.AngularLoss(),
    "tcm": lambda: losses.ThresholdConsistentMarginLoss(margin_plus=0.5, margin_minus=0.0),
}


@pytest.mark.parametrize("name", list(MEMORY_ONLY_OURS))
def test_losses_pml_cannot_run_against_memory(name):
    cbm = CrossBatchMemory(MEMORY_ONLY_OURS[name](), DIM, memory_size=16)
    nonzero = 0
    for emb, labels in batches(1, [7, 5, 8, 6]):
        x = emb.clone().requires_grad_(True)
        value = cbm(x, labels)
        value.backward()
        slots = (cbm.queue_idx - len(labels) + torch.arange(len(labels))) % cbm.memory_size
        mem_emb, mem_labels = cbm.filled_memory()
        expected = MEMORY_ONLY_OURS[name]()(emb, labels, None, mem_emb, mem_labels, query_ref_index=slots)
        assert_close(value, expected, what=f"{name} against the memory")
        assert torch.isfinite(x.grad).all()
        nonzero += float(value.detach()) != 0
    assert nonzero >= 2
