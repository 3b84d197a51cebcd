"""Miners: pick informative index tuples from a batch (pure math, no torch.distributed). PML drop-in."""

from dmlscale.miners.angular import AngularMiner
from dmlscale.miners.base import BaseMiner
from dmlscale.miners.batch_easy_hard import BatchEasyHardMiner
from dmlscale.miners.batch_hard import BatchHardMiner
from dmlscale.miners.distance_weighted import DistanceWeightedMiner
from dmlscale.miners.embeddings_already_packaged_as_triplets import EmbeddingsAlreadyPackagedAsTriplets
from dmlscale.miners.hdc import HDCMiner
from dmlscale.miners.multi_similarity import MultiSimilarityMiner
from dmlscale.miners.pair_margin import PairMarginMiner
from dmlscale.miners.triplet_margin import TripletMarginMiner
from dmlscale.miners.uniform_histogram import UniformHistogramMiner

__all__ = [
    "AngularMiner",
    "BaseMiner",
    "BatchEasyHardMiner",
    "BatchHardMiner",
    "DistanceWeightedMiner",
    "EmbeddingsAlreadyPackagedAsTriplets",
    "HDCMiner",
    "MultiSimilarityMiner",
    "PairMarginMiner",
    "TripletMarginMiner",
    "UniformHistogramMiner",
]
