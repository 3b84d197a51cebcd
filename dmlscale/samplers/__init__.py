"""Samplers: class-balanced batches (PML drop-ins, and a distributed, resumable m-per-class sampler), PML's
fixed set of triplets and its miner-weighted sampler.
Pure index planning from explicit seeds: no torch.distributed, no global generator unless seed=None."""

from dmlscale.samplers.distributed_m_per_class_sampler import DistributedMPerClassSampler
from dmlscale.samplers.fixed_set_of_triplets import FixedSetOfTriplets
from dmlscale.samplers.hierarchical_sampler import HierarchicalSampler
from dmlscale.samplers.m_per_class_sampler import MPerClassSampler
from dmlscale.samplers.tuples_to_weights_sampler import TuplesToWeightsSampler

__all__ = ["DistributedMPerClassSampler", "FixedSetOfTriplets", "HierarchicalSampler", "MPerClassSampler",
           "TuplesToWeightsSampler"]
