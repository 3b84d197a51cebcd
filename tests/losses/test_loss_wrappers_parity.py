"""MultipleLosses and SelfSupervisedLoss equal PML's (float64, 1e-10) in value and gradients: lists, tuples
and dicts of losses, miners per loss, weights, a given indices_tuple, proxy losses inside (gradients w.r.t.
the proxies too); SelfSupervisedLoss symmetric and not over the pair losses PML lists; refusals where PML
asserts or raises, as ValueErrors naming the bad values.

Legend: B batch, D embedding size; emb_BD one view, ref_BD the other.
"""

from __future__ import annotations

import pytest
import torch

import dmlscale.distances as ours_d
import dmlscale.losses as ours
import dmlscale.miners as ours_m
from tests.parity import assert_close, make_batch, triplet_tuple_from_labels, value_and_grads

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
pml_d = pytest.importorskip("pytorch_metric_learning.distances")

DIM = 5


def build(spec, losses_module, miners_module, distances_module):
    """A loss (or miner) from ("ClassName", {options}), in dmlscale's or PML's module."""
    name, options = spec
    options = {k: (getattr(distances_module, v[0])(**v[1]) if k == "distance" else v) for k, v in options.items()}
    module = miners_module if name.endswith("Miner") else losses_module
    return getattr(module, name)(**options)


def build_both(spec):
    return build(spec, ours, ours_m, ours_d), build(spec, pml_losses, pml_miners, pml_d)


def containers(losses, miners, weights, as_dict: bool):
    """(ours, PML) MultipleLosses over the same specs, as a dict (keys l0, l1, ...) or a list."""
    built = [build_both(spec) for spec in losses]
    mined = None if miners is None else [None if spec is None else build_both(spec) for spec in miners]

    def pick(side):
        loss_list = [pair[side] for pair in built]
        miner_list = None if mined is None else [None if m is None else m[side] for m in mined]
        if as_dict:
            keys = [f"l{i}" for i in range(len(loss_list))]
            return dict(losses=dict(zip(keys, loss_list)),
                        miners=None if miner_list is None else {k: m for k, m in zip(keys, miner_list)
                                                                if m is not None},
                        weights=None if weights is None else dict(zip(keys, weights)))
        return dict(losses=loss_list, miners=miner_list, weights=None if weights is None else list(weights))

    return ours.MultipleLosses(**pick(0)), pml_losses.MultipleLosses(**pick(1))


def compare_on(mine, theirs, inputs, call):
    ours_value, ours_grads = value_and_grads(lambda *x: call(mine, *x), inputs)
    pml_value, pml_grads = value_and_grads(lambda *x: call(theirs, *x), inputs)
    assert_close(ours_value, pml_value, what="loss value")
    for i, (mine_grad, pml_grad) in enumerate(zip(ours_grads, pml_grads)):
        assert_close(mine_grad, pml_grad, what=f"gradient of input {i}")
    return ours_value


COMBINATIONS = {
    "two-plain": ([("TripletMarginLoss", {"margin": 0.3}), ("NTXentLoss", {})], None, None),
    "weights": ([("ContrastiveLoss", {}), ("MultiSimilarityLoss", {}), ("NCALoss", {"softmax_scale": 2})],
                None, [0.5, 2.0, -0.25]),
    "miner-on-one": ([("TripletMarginLoss", {"margin": 0.2}), ("SupConLoss", {})],
                     [("BatchHardMiner", {}), None], [1.5, 0.75]),
    "miner-each": ([("ContrastiveLoss", {"pos_margin": 0.1, "neg_margin": 0.6}),
                    ("TripletMarginLoss", {"distance": ("CosineSimilarity", {})})],
                   [("PairMarginMiner", {"pos_margin": 0.3, "neg_margin": 0.9}),
                    ("TripletMarginMiner", {"margin": 0.3, "type_of_triplets": "semihard"})], None),
    "one-loss": ([("CircleLoss", {})], [("MultiSimilarityMiner", {})], [3.0]),
}


@pytest.mark.parametrize("as_dict", [False, True], ids=["list", "dict"])
@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_multiple_losses_parity(combination, as_dict):
    mine, theirs = containers(*COMBINATIONS[combination], as_dict=as_dict)
    emb_BD, labels_B = make_batch(61, batch_size=12, dim=DIM, num_classes=3)
    value = compare_on(mine, theirs, [emb_BD], lambda loss, e: loss(e, labels_B))
    assert abs(value) > 1e-3


@pytest.mark.parametrize("as_dict", [False, True], ids=["list", "dict"])
def test_multiple_losses_pass_a_given_indices_tuple_to_every_loss(as_dict):
    mine, theirs = containers([("TripletMarginLoss", {"margin": 0.4}), ("NCALoss", {})], None, [1.0, 0.5],
                              as_dict=as_dict)
    emb_BD, labels_B = make_batch(62, batch_size=12, dim=DIM, num_classes=3)
    tup = triplet_tuple_from_labels(labels_B, 62)
    compare_on(mine, theirs, [emb_BD], lambda loss, e: loss(e, labels_B, tup))


def test_multiple_losses_tuple_of_losses_and_proxy_gradients():
    """A tuple of losses (PML takes any sequence), one of them a proxy loss: gradients reach its proxies."""
    torch.manual_seed(63)
    pml_proxy = pml_losses.ProxyAnchorLoss(3, DIM).double()
    our_proxy = ours.ProxyAnchorLoss(3, DIM).double()
    with torch.no_grad():
        our_proxy.proxies.copy_(pml_proxy.proxies)
    mine = ours.MultipleLosses((ours.TripletMarginLoss(), our_proxy), weights=(1.0, 0.1))
    theirs = pml_losses.MultipleLosses((pml_losses.TripletMarginLoss(), pml_proxy), weights=(1.0, 0.1))
    emb_BD, labels_B = make_batch(63, batch_size=9, dim=DIM, num_classes=3)
    compare_on(mine, theirs, [emb_BD], lambda loss, e: loss(e, labels_B))
    assert_close(our_proxy.proxies.grad, pml_proxy.proxies.grad, what="gradient w.r.t. the proxies")
    assert [n for n, _ in mine.named_parameters()] == [n for n, _ in theirs.named_parameters()] == ["losses.1.proxies"]
    assert sorted(mine.state_dict()) == sorted(theirs.state_dict())


def test_multiple_losses_defaults_as_pml():
    mine, theirs = containers([("NTXentLoss", {}), ("SupConLoss", {})], None, None, as_dict=True)
    assert mine.weights == theirs.weights == {"l0": 1, "l1": 1}
    assert mine.miners is None and theirs.miners is None
    mine, theirs = containers([("NTXentLoss", {}), ("SupConLoss", {})], None, None, as_dict=False)
    assert mine.weights == theirs.weights == [1, 1]


def test_multiple_losses_refusals_where_pml_asserts():
    triplet, ntxent, miner = ours.TripletMarginLoss(), ours.NTXentLoss(), ours_m.BatchHardMiner()
    emb_BD, labels_B = make_batch(64, batch_size=6, dim=DIM)
    pml_mined = pml_losses.MultipleLosses([pml_losses.TripletMarginLoss()], miners=[pml_miners.BatchHardMiner()])
    tup = triplet_tuple_from_labels(labels_B, 64)
    with pytest.raises(AssertionError):
        pml_mined(emb_BD, labels_B, tup)
    with pytest.raises(ValueError, match="its miners make the indices tuples; pass indices_tuple=None"):
        ours.MultipleLosses([triplet], miners=[miner])(emb_BD, labels_B, tup)
    with pytest.raises(ValueError, match=r"weights must have exactly the losses' keys \['a', 'b'\], got \['a'\]"):
        ours.MultipleLosses({"a": triplet, "b": ntxent}, weights={"a": 1.0})
    with pytest.raises(ValueError, match=r"miners names \['c'\], which are not losses"):
        ours.MultipleLosses({"a": triplet, "b": ntxent}, miners={"c": miner})
    with pytest.raises(ValueError, match="weights has 1 entries for 2 losses"):
        ours.MultipleLosses([triplet, ntxent], weights=[1.0])
    with pytest.raises(ValueError, match="miners has 3 entries for 2 losses"):
        ours.MultipleLosses([triplet, ntxent], miners=[None, None, miner])
    with pytest.raises(ValueError, match="losses is a dict, so weights must be a dict too, got list"):
        ours.MultipleLosses({"a": triplet}, weights=[1.0])
    with pytest.raises(ValueError, match="losses is a list, so miners must be a list too, got dict"):
        ours.MultipleLosses([triplet], miners={"0": miner})
    with pytest.raises(ValueError, match="losses must be a dict or a list of losses, got TripletMarginLoss"):
        ours.MultipleLosses(triplet)
    with pytest.raises(ValueError, match="losses is empty"):
        ours.MultipleLosses([])


# ------------------------------------------------------------------------------------ SelfSupervised
SELF_SUPERVISED = [
    ("NTXentLoss", {}), ("NTXentLoss", {"temperature": 0.5}),
    ("TripletMarginLoss", {"margin": 0.5}),
    ("TripletMarginLoss", {"margin": 0.3, "distance": ("CosineSimilarity", {})}),
    ("ContrastiveLoss", {"pos_margin": 0.05, "neg_margin": 0.8}), ("MultiSimilarityLoss", {}),
    ("SupConLoss", {}), ("CircleLoss", {}), ("NCALoss", {}),
]


def two_views(seed: int, batch_size: int = 8, noise: float = 0.6):
    emb_BD, _ = make_batch(seed, batch_size=batch_size, dim=DIM)
    gen = torch.Generator().manual_seed(seed + 1)
    return emb_BD, emb_BD + noise * torch.randn(batch_size, DIM, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("spec", SELF_SUPERVISED, ids=lambda s: s[0] + "-" + "-".join(map(str, s[1].values())))
def test_self_supervised_parity(spec, symmetric):
    inner_ours, inner_pml = build_both(spec)
    mine = ours.SelfSupervisedLoss(inner_ours, symmetric=symmetric)
    theirs = pml_losses.SelfSupervisedLoss(inner_pml, symmetric=symmetric)
    emb_BD, ref_BD = two_views(65)
    value = compare_on(mine, theirs, [emb_BD, ref_BD], lambda loss, e, r: loss(e, r))
    assert value > 1e-3


@pytest.mark.parametrize("symmetric", [True, False])
def test_self_supervised_batch_of_one_and_default(symmetric):
    emb_BD, ref_BD = two_views(66, batch_size=1)
    compare_on(ours.SelfSupervisedLoss(ours.NTXentLoss(), symmetric=symmetric),
               pml_losses.SelfSupervisedLoss(pml_losses.NTXentLoss(), symmetric=symmetric),
               [emb_BD, ref_BD], lambda loss, e, r: loss(e, r))
    assert ours.SelfSupervisedLoss(ours.NTXentLoss()).symmetric is True


def test_self_supervised_inside_multiple_losses_is_not_pml_shaped():
    """PML's SelfSupervisedLoss takes (embeddings, ref_emb); MultipleLosses calls (embeddings, labels, tuple):
    the combination fails in both (a TypeError: three arguments for two)."""
    emb_BD, labels_B = make_batch(67, batch_size=4, dim=DIM)
    for module in (ours, pml_losses):
        combined = module.MultipleLosses([module.SelfSupervisedLoss(module.NTXentLoss())])
        with pytest.raises(TypeError):
            combined(emb_BD, labels_B)


@pytest.mark.parametrize("name", ["CenterLoss", "ProxyAnchorLoss", "BatchHardTripletLoss", "SoftTripleLoss"])
def test_self_supervised_refuses_an_unsupported_loss_as_pml_does(name):
    loss = getattr(ours, name)(3, DIM) if name in ("CenterLoss", "ProxyAnchorLoss", "SoftTripleLoss") else \
        getattr(ours, name)()
    if hasattr(pml_losses, name):
        pml_loss = getattr(pml_losses, name)(3, DIM)
        with pytest.raises(Exception, match=f"SelfSupervisedLoss not supported for {name}"):
            pml_losses.SelfSupervisedLoss(pml_loss)
    with pytest.raises(ValueError, match=f"SelfSupervisedLoss does not support {name}; it wraps one of"):
        ours.SelfSupervisedLoss(loss)


def test_self_supervised_errors_name_the_bad_values():
    loss = ours.SelfSupervisedLoss(ours.NTXentLoss())
    emb_BD, ref_BD = two_views(68)
    with pytest.raises(ValueError, match=r"ref_emb must be the other view of the same rows, shape \(8, 5\); "
                                         r"got \(7, 5\)"):
        loss(emb_BD, ref_BD[:7])
    with pytest.raises(ValueError, match="ref_emb must be a floating tensor"):
        loss(emb_BD, ref_BD.long())
    with pytest.raises(ValueError, match="symmetric must be True or False, got 'yes'"):
        ours.SelfSupervisedLoss(ours.NTXentLoss(), symmetric="yes")
    assert ours.SelfSupervisedLoss.supported_losses() == pml_losses.SelfSupervisedLoss.supported_losses()
    assert issubclass(ours.SelfSupervisedLoss, ours.BaseLossWrapper)
