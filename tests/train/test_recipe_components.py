"""A recipe names any loss, miner, reducer and distance of the library with its constructor options; options are
checked against the class's signature, and the earlier releases' keys still work, with a warning."""

from __future__ import annotations

import inspect
import math
import warnings

import pytest
import torch
import yaml

from dmlscale import components, distances, losses, miners
from dmlscale.distributed import DistributedClipLoss, DistributedCrossBatchMemory, DistributedLoss, DistributedSigLipLoss
from dmlscale.distributed.sharded_classification import OwnedBlock, seeded_columns
from dmlscale.train.build import build_loss
from dmlscale.train.config import ConfigWarning, LossConfig, load_config
from dmlscale.train.loss_parameters import LossParameters
from dmlscale.train.schema import section_from_dict
from dmlscale.train.session import current_form

EMBEDDING_SIZE = 16
REQUIRED = {"CenterLoss": {"num_classes": 10},  # options without a default
            "MultipleLosses": {"losses": ["TripletMarginLoss", {"name": "NTXentLoss"}]},
            "ProxyAnchorLoss": {"num_classes": 10},
            "ProxyNCALoss": {"num_classes": 10},
            "RankedListLoss": {"margin": 0.4, "Tn": 4},
            "SelfSupervisedLoss": {"loss": "NTXentLoss"},
            "SoftTripleLoss": {"num_classes": 10}}
REQUIRED |= {name: {"num_classes": 10} for name in ("ArcFaceLoss", "CosFaceLoss", "LargeMarginSoftmaxLoss",
                                                   "NormalizedSoftmaxLoss", "SphereFaceLoss", "SubCenterArcFaceLoss")}
REQUIRED["P2SGradLoss"] = {"descriptors_dim": EMBEDDING_SIZE, "num_classes": 10}


def label_recipe(tmp_path, loss: dict):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"data": {"task": "image_label"}, "model": {"embed_dim": EMBEDDING_SIZE},
                                    "loss": loss}))
    return load_config(path)


def changed_option(cls: type) -> tuple[str, object] | None:
    """A numeric option of `cls` set to a valid value other than its default, to see it reach the instance."""
    for name, param in components.accepted_options(cls).items():
        default = param.default
        if isinstance(default, bool) or not isinstance(default, (int, float)) or name in ("tile_size", "p", "power"):
            continue
        if name == "tiled_threshold":
            return name, default + 1
        return name, (default * 0.5 if default else 0.25) if isinstance(default, float) else default + 1
    return None


def test_every_kind_is_offered_without_its_templates():
    assert set(components.component_classes("loss")) >= {"TripletMarginLoss", "ClipLoss", "SigLipLoss", "NCALoss",
                                                         "CircleLoss", "MultiSimilarityLoss", "SupConLoss"}
    assert "GenericPairLoss" not in components.component_classes("loss")
    assert "BaseMetricLossFunction" not in components.component_classes("loss")
    assert "MeanReducer" not in components.component_classes("loss")
    assert "BaseMiner" not in components.component_classes("miner")
    assert set(components.component_classes("distance")) == {"LpDistance", "CosineSimilarity",
                                                             "DotProductSimilarity", "SNRDistance"}
    assert set(components.component_classes("reducer")) >= {"MeanReducer", "AvgNonZeroReducer", "ThresholdReducer"}


@pytest.mark.parametrize("name", sorted(components.component_classes("loss")))
def test_every_loss_builds_from_a_recipe_dict_with_its_options(name):
    cls = components.component_classes("loss")[name]
    options = dict(REQUIRED.get(name, {}))
    changed = changed_option(cls)
    if changed is not None:
        options[changed[0]] = changed[1]
    if name in components.VIEW_PAIR_LOSSES:  # the trainer feeds labelled batches: refused, built by components
        with pytest.raises(ValueError, match=rf"name='{name}' scores \(embeddings, ref_emb\) augmentation pairs"):
            section_from_dict(LossConfig, {"name": name, "options": options})
        assert type(components.build_component("loss", {"name": name, "options": options}, key="loss")) is cls
        return
    loss_config = section_from_dict(LossConfig, {"name": name, "options": options})
    built = build_loss(loss_config, embedding_size=EMBEDDING_SIZE)
    if name == "MultipleLosses":  # each loss in its own DistributedLoss
        assert type(built) is cls and all(isinstance(part, DistributedLoss) for part in built.losses)
        pure = built
    elif name in components.IMAGE_TEXT_LOSSES:
        assert isinstance(built, {"ClipLoss": DistributedClipLoss, "SigLipLoss": DistributedSigLipLoss}[name])
        pure = built
    else:
        assert isinstance(built, DistributedLoss) and type(built.loss) is cls
        pure = built.loss
    if changed is not None and hasattr(pure, changed[0]):
        assert getattr(pure, changed[0]) == pytest.approx(changed[1]), changed


@pytest.mark.parametrize("name", sorted(components.component_classes("miner")))
def test_every_miner_builds_from_a_recipe_dict(tmp_path, name):
    cls = components.component_classes("miner")[name]
    changed = changed_option(cls)
    options = {} if changed is None else {changed[0]: changed[1]}
    config = label_recipe(tmp_path, {"name": "ContrastiveLoss", "miner": {"name": name, "options": options}})
    built = build_loss(config.loss, embedding_size=EMBEDDING_SIZE)
    assert type(built.miner) is cls
    if changed is not None and hasattr(built.miner, changed[0]):
        expected = math.radians(changed[1]) if changed[0] == "angle" else changed[1]  # PML keeps radians
        assert getattr(built.miner, changed[0]) == pytest.approx(expected)


@pytest.mark.parametrize("name", sorted(components.component_classes("reducer")))
def test_every_reducer_builds_from_a_recipe_dict(tmp_path, name):
    options = {"ThresholdReducer": {"low": 0.1}, "ClassWeightedReducer": {"weights": [1.0, 0.5]},
               "MultipleReducers": {"reducers": {"pos_loss": "SumReducer", "neg_loss": {"name": "MeanReducer"}}}}
    config = label_recipe(tmp_path, {"name": "ContrastiveLoss", "options": {
        "reducer": {"name": name, "options": options.get(name, {})}}})
    reducer = build_loss(config.loss, embedding_size=EMBEDDING_SIZE).loss.reducer
    if name == "DoNothingReducer":  # kept whole, as in PML: the loss returns its unreduced terms
        assert type(reducer) is losses.DoNothingReducer
    elif name == "MultipleReducers":
        assert isinstance(reducer, losses.MultipleReducers)
        assert type(reducer.reducers["pos_loss"]) is losses.SumReducer
        assert type(reducer.reducers["neg_loss"]) is losses.MeanReducer
    else:  # ContrastiveLoss has two sub-losses: each gets a copy of the named reducer
        assert {type(r) for r in reducer.reducers.values()} == {components.component_classes("reducer")[name]}
    if name == "ThresholdReducer":
        assert all(r.low == 0.1 for r in reducer.reducers.values())


@pytest.mark.parametrize("name", sorted(components.component_classes("distance")))
def test_every_distance_builds_from_a_recipe_dict_for_loss_and_miner(tmp_path, name):
    spec = {"name": name, "options": {"power": 2}}
    config = label_recipe(tmp_path, {"name": "TripletMarginLoss", "options": {"distance": spec},
                                     "miner": {"name": "TripletMarginMiner", "options": {"distance": spec}}})
    built = build_loss(config.loss, embedding_size=EMBEDDING_SIZE)
    for part in (built.loss, built.miner):
        assert type(part.distance) is getattr(distances, name) and part.distance.power == 2


def test_the_issue_example_builds_exactly_what_it_says(tmp_path):
    config = label_recipe(tmp_path, {"name": "MultiSimilarityLoss", "options": {"alpha": 2, "beta": 40},
                                     "miner": {"name": "MultiSimilarityMiner", "options": {"epsilon": 0.1}},
                                     "memory_size": 64})
    built = build_loss(config.loss, embedding_size=EMBEDDING_SIZE)
    assert isinstance(built, DistributedCrossBatchMemory)
    loss, miner = built.memory.loss, built.memory.miner
    assert type(loss) is losses.MultiSimilarityLoss and (loss.alpha, loss.beta, loss.base) == (2, 40, 0.5)
    assert type(miner) is miners.MultiSimilarityMiner and miner.epsilon == 0.1


@pytest.mark.parametrize("loss, needles", [
    ({"name": "MultiSimilarityLoss", "options": {"alpah": 2}},
     ["loss.options.alpah", "MultiSimilarityLoss", "did you mean 'alpha'"]),
    ({"name": "ContrastiveLoss", "miner": {"name": "PairMarginMiner", "options": {"pos_margn": 0.1}}},
     ["loss.miner.options.pos_margn", "PairMarginMiner", "did you mean 'pos_margin'"]),
    ({"name": "ContrastiveLoss", "options": {"distance": {"name": "CosineSimilarity", "options": {"powr": 2}}}},
     ["loss.options.distance.options.powr", "CosineSimilarity", "did you mean 'power'"]),
    ({"name": "ContrastiveLoss", "options": {"reducer": "MeanReduce"}},
     ["loss.options.reducer", "'MeanReduce'", "did you mean 'MeanReducer'"]),
    ({"name": "TripletMarginLos"}, ["loss.name", "'TripletMarginLos'", "did you mean 'TripletMarginLoss'"]),
    ({"name": "ContrastiveLoss", "miner": "BatchHardMiners"}, ["loss.miner.name", "'BatchHardMiners'"]),
    ({"name": "ContrastiveLoss", "options": {"neg_margin": "wide"}},
     ["loss.options.neg_margin", "a number", "ContrastiveLoss", "'wide'"]),
    ({"name": "TripletMarginLoss", "options": {"tiled": "yes"}}, ["loss.options.tiled", "true or false", "'yes'"]),
    ({"name": "NTXentLoss", "options": {"temperature": -1}}, ["loss.options", "temperature=-1", "positive"]),
    ({"name": "ContrastiveLoss", "options": "margin=1"}, ["loss.options", "mapping", "'margin=1'"]),
    ({"name": "ContrastiveLoss", "miner": {"name": "PairMarginMiner", "opts": {}}}, ["loss.miner", "opts"]),
])
def test_a_misspelled_or_bad_option_is_refused_by_name(tmp_path, loss, needles):
    with pytest.raises(ValueError) as error:
        label_recipe(tmp_path, loss)
    for needle in needles:
        assert needle in str(error.value), (needle, str(error.value))


def test_a_required_option_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"loss\.options\.num_classes: CenterLoss needs this option"):
        label_recipe(tmp_path, {"name": "CenterLoss"})


@pytest.mark.parametrize("name, parameters", [
    ("CenterLoss", ["loss.centres_CD"]), ("ArcFaceLoss", ["loss.W"]), ("SubCenterArcFaceLoss", ["loss.W"]),
    ("NormalizedSoftmaxLoss", ["loss.W"]), ("P2SGradLoss", ["loss.weight"]), ("ProxyAnchorLoss", ["loss.proxies"]),
    ("ProxyNCALoss", ["loss.proxies"]), ("SoftTripleLoss", ["loss.fc"])])
def test_a_loss_with_parameters_builds_and_its_parameters_are_trained_beside_the_engine(tmp_path, name, parameters):
    config = label_recipe(tmp_path, {"name": name, "options": dict(REQUIRED.get(name, {"num_classes": 10}))})
    built = build_loss(config.loss, embedding_size=EMBEDDING_SIZE)
    assert type(built.loss).__name__ == name
    trained = LossParameters(built, lr=0.1, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, grad_clip=1.0,
                             world_size=1)
    assert [name for name, _ in trained.named] == parameters and trained.owned == {}


@pytest.mark.parametrize("name, sharded_name", [("ArcFaceLoss", "ShardedArcFaceLoss"),
                                                ("CosFaceLoss", "ShardedCosFaceLoss"),
                                                ("NormalizedSoftmaxLoss", "ShardedNormalizedSoftmaxLoss")])
def test_loss_sharded_builds_the_class_sharded_head_with_the_recipes_options(tmp_path, name, sharded_name):
    options = {"num_classes": 12, **({"temperature": 0.1} if name == "NormalizedSoftmaxLoss" else {"scale": 30.0})}
    config = label_recipe(tmp_path, {"name": name, "options": options, "sharded": True})
    built = build_loss(config.loss, embedding_size=EMBEDDING_SIZE, seed=5)
    assert type(built).__name__ == sharded_name and built.data_parallel is True
    assert built.num_classes == 12 and built.W.shape == (EMBEDDING_SIZE, 12)
    assert torch.equal(built.W.detach(), seeded_columns(5, EMBEDDING_SIZE, 0, 12))  # from the seed alone
    assert built.scale == (10.0 if name == "NormalizedSoftmaxLoss" else 30.0)
    trained = LossParameters(built, lr=0.1, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, grad_clip=1.0,
                             world_size=1)
    assert trained.owned == {"W": OwnedBlock(0, 12, 12)}


@pytest.mark.parametrize("name, options, parameter, per_class, class_dim", [
    ("SubCenterArcFaceLoss", {"sub_centers": 2, "margin": 30.0}, "W", 2, 1),
    ("LargeMarginSoftmaxLoss", {"margin": 3, "scale": 2.0}, "W", 1, 1),
    ("SphereFaceLoss", {"margin": 2}, "W", 1, 1),
    ("SoftTripleLoss", {"centers_per_class": 4, "la": 10.0}, "fc", 4, 1),
    ("ProxyAnchorLoss", {"margin": 0.2, "alpha": 16.0}, "proxies", 1, 0),
    ("ProxyNCALoss", {"softmax_scale": 2.0}, "proxies", 1, 0)])
def test_loss_sharded_reaches_the_sharded_proxy_and_multi_centre_losses(tmp_path, name, options, parameter, per_class,
                                                                       class_dim):
    config = label_recipe(tmp_path, {"name": name, "options": {"num_classes": 12, **options}, "sharded": True})
    built = build_loss(config.loss, embedding_size=EMBEDDING_SIZE, seed=5)
    assert type(built).__name__ == f"Sharded{name}" and built.data_parallel is True and built.num_classes == 12
    assert all(getattr(built, key) == value for key, value in options.items())
    full_shape = (EMBEDDING_SIZE, 12 * per_class) if class_dim == 1 else (12 * per_class, EMBEDDING_SIZE)
    assert getattr(built, parameter).shape == full_shape  # one process owns every class
    again = build_loss(config.loss, embedding_size=EMBEDDING_SIZE, seed=5)
    other = build_loss(config.loss, embedding_size=EMBEDDING_SIZE, seed=6)
    assert torch.equal(getattr(again, parameter), getattr(built, parameter))  # from the seed alone
    assert not torch.equal(getattr(other, parameter), getattr(built, parameter))
    trained = LossParameters(built, lr=0.1, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, grad_clip=1.0,
                             world_size=1)
    assert trained.owned == {parameter: OwnedBlock(0, 12, 12, class_dim, per_class)}
    embeddings, labels = torch.randn(6, EMBEDDING_SIZE), torch.tensor([0, 3, 3, 7, 11, 1])
    built(embeddings, labels).backward()
    assert getattr(built, parameter).grad.abs().sum() > 0


@pytest.mark.parametrize("loss, needle", [
    ({"name": "TripletMarginLoss", "sharded": True},
     r"loss.sharded=true needs one of \['ArcFaceLoss', 'CosFaceLoss', 'LargeMarginSoftmaxLoss', "
     r"'NormalizedSoftmaxLoss', 'ProxyAnchorLoss', 'ProxyNCALoss', 'SoftTripleLoss', 'SphereFaceLoss', "
     r"'SubCenterArcFaceLoss'\] as loss.name, "
     r"got 'TripletMarginLoss'"),
    ({"name": "ArcFaceLoss", "options": {"num_classes": 10}, "sharded": True, "miner": "BatchHardMiner"},
     r"loss.miner=.*does not apply to sharded=True"),
    ({"name": "ArcFaceLoss", "options": {"num_classes": 10}, "sharded": True, "memory_size": 64},
     r"loss.memory_size=64 does not apply to sharded=True"),
    ({"name": "ArcFaceLoss", "options": {"num_classes": 10, "init_seed": 3}, "sharded": True},
     r"loss.options.init_seed is set by the trainer for sharded=true"),
    ({"name": "ArcFaceLoss", "options": {"num_classes": 10, "weight_regularizer": "LpRegularizer"}, "sharded": True},
     r"loss.options.weight_regularizer: ShardedArcFaceLoss takes no option 'weight_regularizer'"),
    ({"name": "ArcFaceLoss", "sharded": True}, r"loss.options.num_classes: ShardedArcFaceLoss needs this option"),
])
def test_a_sharded_loss_the_trainer_cannot_run_is_refused_by_name(tmp_path, loss, needle):
    with pytest.raises(ValueError, match=needle):
        label_recipe(tmp_path, loss)


def test_a_recipe_dict_builds_self_supervised_loss_around_ntxent():
    recipe = {"name": "SelfSupervisedLoss", "options": {"symmetric": False, "loss": {
        "name": "NTXentLoss", "options": {"temperature": 0.2, "distance": {"name": "CosineSimilarity"}}}}}
    built = components.build_component("loss", recipe, key="loss")
    assert type(built) is losses.SelfSupervisedLoss and built.symmetric is False
    assert type(built.loss) is losses.NTXentLoss and built.loss.temperature == 0.2
    assert type(built.loss.distance) is distances.CosineSimilarity
    emb = torch.randn(6, EMBEDDING_SIZE, dtype=torch.float64)
    ref = emb + 0.3 * torch.randn(6, EMBEDDING_SIZE, dtype=torch.float64)
    expected = losses.NTXentLoss(temperature=0.2)(emb, torch.arange(6), ref_emb=ref, ref_labels=torch.arange(6))
    assert float(built(emb, ref)) == pytest.approx(float(expected), abs=1e-12)
    with pytest.raises(ValueError, match=r"loss.options.loss.options.temprature: NTXentLoss takes no option"):
        components.build_component("loss", {"name": "SelfSupervisedLoss", "options": {"loss": {
            "name": "NTXentLoss", "options": {"temprature": 0.2}}}}, key="loss")
    with pytest.raises(ValueError, match="SelfSupervisedLoss does not support CenterLoss"):
        components.build_component("loss", {"name": "SelfSupervisedLoss", "options": {"loss": "CenterLoss"}},
                                   key="loss", context={"embedding_size": EMBEDDING_SIZE, "num_classes": 3})


@pytest.mark.parametrize("as_dict", [False, True], ids=["list", "dict"])
def test_a_multiple_losses_recipe_trains_every_loss_over_the_global_batch(tmp_path, as_dict):
    """Nested specs (with a miner for one loss and weights) build; the trainer's loss wraps each loss in
    DistributedLoss with its miner, and on one process equals the plain MultipleLosses."""
    specs = [{"name": "TripletMarginLoss", "options": {"margin": 0.3}}, "MultiSimilarityLoss"]
    miners_ = [{"name": "BatchHardMiner"}, None]
    weights = [1.0, 0.5]
    if as_dict:
        options = {"losses": {"t": specs[0], "m": specs[1]}, "miners": {"t": miners_[0]},
                   "weights": {"t": 1.0, "m": 0.5}}
    else:
        options = {"losses": specs, "miners": miners_, "weights": weights}
    config = label_recipe(tmp_path, {"name": "MultipleLosses", "options": options})
    built = build_loss(config.loss, embedding_size=EMBEDDING_SIZE)
    plain = components.build_component("loss", {"name": "MultipleLosses", "options": options}, key="loss")
    parts = [built.losses["t"], built.losses["m"]] if as_dict else list(built.losses)
    assert [type(p.loss) for p in parts] == [losses.TripletMarginLoss, losses.MultiSimilarityLoss]
    assert type(parts[0].miner) is miners.BatchHardMiner and parts[1].miner is None
    assert built.weights == plain.weights and built.miners is None
    emb = torch.randn(12, EMBEDDING_SIZE, dtype=torch.float64)
    labels = torch.arange(12) % 3
    assert float(built(emb, labels)) == pytest.approx(float(plain(emb, labels)), abs=1e-12)


@pytest.mark.parametrize("loss, needle", [
    ({"name": "MultipleLosses", "options": {"losses": ["TripletMarginLoss"]}, "memory_size": 64},
     "loss.memory_size=64 does not apply to MultipleLosses"),
    ({"name": "MultipleLosses", "options": {"losses": ["TripletMarginLoss"], "miners": ["BatchHardMiner"]},
      "miner": "BatchHardMiner"}, "miner and options.miners both mine"),
    ({"name": "MultipleLosses", "options": {"losses": ["TripletMarginLoss", "ClipLoss"]}},
     r"loss.options.losses\[1\]: DistributedLoss wraps a dmlscale metric loss, got ClipLoss"),
    ({"name": "MultipleLosses", "options": {"losses": {"a": "NTXentLoss"}, "weights": {"b": 1.0}}},
     r"weights must have exactly the losses' keys \['a'\]"),
])
def test_a_multiple_losses_recipe_the_trainer_cannot_run_is_refused(tmp_path, loss, needle):
    with pytest.raises(ValueError, match=needle):
        config = label_recipe(tmp_path, loss)
        build_loss(config.loss, embedding_size=EMBEDDING_SIZE)


def test_image_text_loss_options_reach_the_distributed_loss():
    built = build_loss(section_from_dict(LossConfig, {"name": "SigLipLoss", "options": {"tiled": True,
                                                                                        "tile_size": 8}}))
    assert isinstance(built, DistributedSigLipLoss) and built.tiled is True and built.tile_size == 8
    with pytest.raises(ValueError, match=r"options.temperature: ClipLoss takes no option 'temperature'"):
        section_from_dict(LossConfig, {"name": "ClipLoss", "options": {"temperature": 0.1}})


def legacy(*overrides: str):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = load_config(None, ["data.task=image_label", *overrides])
    return config, [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]


@pytest.mark.parametrize("old, new", [
    (["loss.name=triplet", "loss.miner=batch_hard"],
     ["loss.name=TripletMarginLoss", "loss.options.margin=0.2", "loss.miner=BatchHardMiner"]),
    (["loss.name=supcon"], ["loss.name=SupConLoss", "loss.options.temperature=0.07"]),
    (["loss.name=ntxent", "loss.temperature=0.2", "loss.tiled=true"],
     ["loss.name=NTXentLoss", "loss.options={temperature: 0.2, tiled: true}"]),
    (["loss.name=triplet", "loss.margin=0.3", "loss.miner=triplet_margin"],
     ["loss.name=TripletMarginLoss", "loss.options.margin=0.3",
      "loss.miner={name: TripletMarginMiner, options: {margin: 0.3, type_of_triplets: semihard}}"]),
    (["loss.name=contrastive", "loss.tiled=false"], ["loss.name=ContrastiveLoss", "loss.options.tiled=false"]),
])
def test_earlier_keys_still_work_with_a_warning_each(old, new):
    old_config, said = legacy(*old)
    new_config, new_said = legacy(*new)
    assert old_config == new_config and new_said == []
    assert said and all("deprecated" in line for line in said), said
    for key in ("loss.name", "loss.miner", "loss.temperature", "loss.margin", "loss.tiled"):
        if any(o.startswith(key + "=") for o in old):
            assert any(line.startswith(key) for line in said), (key, said)


# what every metric loss takes from its base, as PML's BaseMetricLossFunction
BASE_OPTIONS = {"distance", "reducer", "collect_stats", "embedding_regularizer", "embedding_reg_weight"}


def test_an_earlier_key_that_does_nothing_is_said_not_dropped():
    config, said = legacy("loss.name=MultiSimilarityLoss", "loss.temperature=0.5")
    assert config.loss.options == {} and config.loss.temperature is None
    assert said == [f"loss.temperature=0.5 has no effect on MultiSimilarityLoss (deprecated key; its options: "
                    f"{sorted(inspect.signature(losses.MultiSimilarityLoss).parameters.keys() - {'kwargs'} | BASE_OPTIONS)})"]


def test_a_checkpoint_config_in_earlier_keys_compares_equal_to_the_same_run_today():
    today = load_config(None, ["data.task=image_label", "loss.name=TripletMarginLoss", "loss.options.margin=0.2",
                               "loss.miner=BatchHardMiner"]).to_dict()
    earlier = {**today, "loss": {"name": "triplet", "miner": "batch_hard", "temperature": 0.07, "margin": 0.2,
                                 "memory_size": 0, "tiled": None}}
    assert current_form(earlier) == today
