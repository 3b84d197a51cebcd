"""The losses and miners `dmlscale demo` offers, importing nothing (its `--help` lists them before torch loads).

The demo trains labelled embeddings, so it offers the losses and miners of dmlscale.losses / dmlscale.miners
that take (embeddings, labels); the others are named here with the reason (a test runs every listed name and
checks that every other public name is refused)."""

from __future__ import annotations

DEMO_LOSSES = ("AngularLoss", "ArcFaceLoss", "BatchAllTripletLoss", "BatchHardTripletLoss", "BinomialDevianceLoss",
               "CenterLoss", "CircleLoss", "ContrastiveLoss", "CosFaceLoss", "DistanceWeightedMarginLoss",
               "DynamicSoftMarginLoss", "FastAPLoss", "GaussianWeightedNegativeLoss",
               "GeneralizedLiftedStructureLoss", "HardPairLoss", "HistogramLoss", "InstanceLoss",
               "IntraPairVarianceLoss", "LargeMarginSoftmaxLoss", "LiftedStructureLoss", "MarginLoss",
               "MultiSimilarityLoss", "NCALoss", "NPairsLoss", "NTXentLoss", "NormalizedSoftmaxLoss", "P2SGradLoss",
               "PNPLoss", "ProxyAnchorLoss", "ProxyNCALoss", "SignalToNoiseRatioContrastiveLoss", "SmoothAPLoss",
               "SoftMarginTripletLoss", "SoftTripleLoss", "SphereFaceLoss", "SubCenterArcFaceLoss", "SupConLoss",
               "ThresholdConsistentMarginLoss", "TripletMarginLoss", "TupletMarginLoss")
DEMO_MINERS = ("AngularMiner", "BatchEasyHardMiner", "BatchHardMiner", "DistanceWeightedMiner", "HDCMiner",
               "MultiSimilarityMiner", "PairMarginMiner", "TripletMarginMiner", "UniformHistogramMiner")
NOT_IN_DEMO = {
    "ClipLoss": "it scores image-text feature pairs, not labelled embeddings; `dmlscale train` trains CLIP",
    "SigLipLoss": "it scores image-text feature pairs, not labelled embeddings; "
                  "`dmlscale train loss.name=SigLipLoss` trains SigLIP",
    "RankedListLoss": "it has required options (margin, Tn) the demo does not ask for; "
                      "`dmlscale train loss.name=RankedListLoss` takes them as loss.options",
    "VICRegLoss": "it compares two views of the same samples (embeddings, ref_emb) and takes no labels",
    "ManifoldLoss": "it takes no labels (meta-classes are drawn at random or given as indices_tuple)",
    "GenericPairLoss": "it is the base class of the pair losses, not a loss to train",
    "BaseLossWrapper": "it is the base class of the loss wrappers, not a loss to train",
    "BaseMetricLossFunction": "it is the base class of every loss, not a loss to train",
    "BaseMiner": "it is the base class of every miner, not a miner to use",
    "MultipleLosses": "it combines losses given to it as objects (MultipleLosses(losses, miners, weights)); "
                      "a `dmlscale train` recipe builds it from nested specs",
    "SelfSupervisedLoss": "it scores (embeddings, ref_emb) augmentation pairs, not labelled embeddings",
    "EmbeddingsAlreadyPackagedAsTriplets": "it needs batches laid out as consecutive (anchor, positive, negative) "
                                           "rows, and the demo's batches are class-balanced, not packaged",
}


def check_choice(option: str, name: str | None, allowed: tuple[str, ...]) -> None:
    """ValueError naming `name`, why the demo cannot use it (when known) and the allowed names."""
    if name is None or name in allowed:
        return
    reason = f": {NOT_IN_DEMO[name]}" if name in NOT_IN_DEMO else ""
    raise ValueError(f"{option} {name!r} is not one the demo offers{reason}; allowed: {list(allowed)}")
