"""Miners: pick informative index tuples from a batch (pure math, no torch.distributed). PML drop-in."""

from dmlscale.miners.base import BaseMiner
from dmlscale.miners.batch_easy_hard import BatchEasyHardMiner
from dmlscale.miners.batch_hard import BatchHardMiner
from dmlscale.miners.distance_weighted import DistanceWeightedMiner
from dmlscale.miners.multi_similarity import MultiSimilarityMiner
from dmlscale.miners.pair_margin import PairMarginMiner
from dmlscale.miners.triplet_margin import TripletMarginMiner

__all__ = [
    "BaseMiner",
    "BatchEasyHardMiner",
    "BatchHardMiner",
    "DistanceWeightedMiner",
    "MultiSimilarityMiner",
    "PairMarginMiner",
    "TripletMarginMiner",
]
