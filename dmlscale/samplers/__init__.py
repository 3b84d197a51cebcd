"""Samplers: class-balanced batches (PML drop-ins, and a distributed, resumable m-per-class sampler).
Pure index planning from explicit seeds: no torch.distributed, no global generator unless seed=None."""

from dmlscale.samplers.distributed_m_per_class_sampler import DistributedMPerClassSampler
from dmlscale.samplers.hierarchical_sampler import HierarchicalSampler
from dmlscale.samplers.m_per_class_sampler import MPerClassSampler

__all__ = ["DistributedMPerClassSampler", "HierarchicalSampler", "MPerClassSampler"]
