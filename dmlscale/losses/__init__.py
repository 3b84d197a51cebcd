"""Metric losses (pure math: no torch.distributed here). Drop-in compatible with pytorch-metric-learning."""

from dmlscale.losses.angular_loss import AngularLoss
from dmlscale.losses.arcface_loss import ArcFaceLoss
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.losses.base_loss_wrapper import BaseLossWrapper
from dmlscale.losses.batch_all_triplet_loss import BatchAllTripletLoss
from dmlscale.losses.batch_hard_triplet_loss import BatchHardTripletLoss
from dmlscale.losses.binomial_deviance_loss import BinomialDevianceLoss
from dmlscale.losses.center_loss import CenterLoss
from dmlscale.losses.circle_loss import CircleLoss
from dmlscale.losses.clip_loss import ClipLoss
from dmlscale.losses.contrastive_loss import ContrastiveLoss
from dmlscale.losses.cosface_loss import CosFaceLoss
from dmlscale.losses.distance_weighted_margin_loss import DistanceWeightedMarginLoss
from dmlscale.losses.dynamic_soft_margin_loss import DynamicSoftMarginLoss
from dmlscale.losses.fast_ap_loss import FastAPLoss
from dmlscale.losses.gaussian_weighted_negative_loss import GaussianWeightedNegativeLoss
from dmlscale.losses.generalized_lifted_structure_loss import GeneralizedLiftedStructureLoss
from dmlscale.losses.generic_pair_loss import GenericPairLoss
from dmlscale.losses.hard_pair_loss import HardPairLoss
from dmlscale.losses.histogram_loss import HistogramLoss
from dmlscale.losses.instance_loss import InstanceLoss
from dmlscale.losses.intra_pair_variance_loss import IntraPairVarianceLoss
from dmlscale.losses.large_margin_softmax_loss import LargeMarginSoftmaxLoss
from dmlscale.losses.lifted_structure_loss import LiftedStructureLoss
from dmlscale.losses.manifold_loss import ManifoldLoss
from dmlscale.losses.margin_loss import MarginLoss
from dmlscale.losses.multi_similarity_loss import MultiSimilarityLoss
from dmlscale.losses.multiple_losses import MultipleLosses
from dmlscale.losses.n_pairs_loss import NPairsLoss
from dmlscale.losses.nca_loss import NCALoss
from dmlscale.losses.normalized_softmax_loss import NormalizedSoftmaxLoss
from dmlscale.losses.ntxent_loss import NTXentLoss
from dmlscale.losses.p2s_grad_loss import P2SGradLoss
from dmlscale.losses.pnp_loss import PNPLoss
from dmlscale.losses.proxy_anchor_loss import ProxyAnchorLoss
from dmlscale.losses.proxy_nca_loss import ProxyNCALoss
from dmlscale.losses.ranked_list_loss import RankedListLoss
from dmlscale.losses.reducers import (
    AvgNonZeroReducer,
    BaseReducer,
    ClassWeightedReducer,
    DivisorReducer,
    DoNothingReducer,
    MeanReducer,
    MultipleReducers,
    PerAnchorReducer,
    SumReducer,
    ThresholdReducer,
)
from dmlscale.losses.self_supervised_loss import SelfSupervisedLoss
from dmlscale.losses.siglip_loss import SigLipLoss
from dmlscale.losses.signal_to_noise_ratio_contrastive_loss import SignalToNoiseRatioContrastiveLoss
from dmlscale.losses.smooth_ap_loss import SmoothAPLoss
from dmlscale.losses.soft_margin_triplet_loss import SoftMarginTripletLoss
from dmlscale.losses.soft_triple_loss import SoftTripleLoss
from dmlscale.losses.sphereface_loss import SphereFaceLoss
from dmlscale.losses.subcenter_arcface_loss import SubCenterArcFaceLoss
from dmlscale.losses.supcon_loss import SupConLoss
from dmlscale.losses.threshold_consistent_margin_loss import ThresholdConsistentMarginLoss
from dmlscale.losses.triplet_margin_loss import TripletMarginLoss
from dmlscale.losses.tuplet_margin_loss import TupletMarginLoss
from dmlscale.losses.vicreg_loss import VICRegLoss

__all__ = [
    "AngularLoss",
    "ArcFaceLoss",
    "AvgNonZeroReducer",
    "BaseLossWrapper",
    "BaseMetricLossFunction",
    "BaseReducer",
    "BatchAllTripletLoss",
    "BatchHardTripletLoss",
    "BinomialDevianceLoss",
    "CenterLoss",
    "CircleLoss",
    "ClassWeightedReducer",
    "ClipLoss",
    "ContrastiveLoss",
    "CosFaceLoss",
    "DistanceWeightedMarginLoss",
    "DivisorReducer",
    "DoNothingReducer",
    "DynamicSoftMarginLoss",
    "FastAPLoss",
    "GaussianWeightedNegativeLoss",
    "GeneralizedLiftedStructureLoss",
    "GenericPairLoss",
    "HardPairLoss",
    "HistogramLoss",
    "InstanceLoss",
    "IntraPairVarianceLoss",
    "LargeMarginSoftmaxLoss",
    "LiftedStructureLoss",
    "ManifoldLoss",
    "MarginLoss",
    "MeanReducer",
    "MultiSimilarityLoss",
    "MultipleLosses",
    "MultipleReducers",
    "NCALoss",
    "NPairsLoss",
    "NTXentLoss",
    "NormalizedSoftmaxLoss",
    "P2SGradLoss",
    "PNPLoss",
    "PerAnchorReducer",
    "ProxyAnchorLoss",
    "ProxyNCALoss",
    "RankedListLoss",
    "SelfSupervisedLoss",
    "SigLipLoss",
    "SignalToNoiseRatioContrastiveLoss",
    "SmoothAPLoss",
    "SoftMarginTripletLoss",
    "SoftTripleLoss",
    "SphereFaceLoss",
    "SubCenterArcFaceLoss",
    "SumReducer",
    "SupConLoss",
    "ThresholdConsistentMarginLoss",
    "ThresholdReducer",
    "TripletMarginLoss",
    "TupletMarginLoss",
    "VICRegLoss",
]


def __getattr__(name: str):
    """`dmlscale.losses.CrossBatchMemory`, as in PML; it lives in dmlscale.memory (queue state), loaded lazily
    because dmlscale.memory itself builds on this package."""
    if name == "CrossBatchMemory":
        from dmlscale.memory import CrossBatchMemory

        return CrossBatchMemory
    raise AttributeError(f"module 'dmlscale.losses' has no attribute {name!r}")
