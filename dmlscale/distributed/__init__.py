"""Everything that talks to torch.distributed: world info, process groups, autograd-exact collectives."""

from dmlscale.distributed.collectives import all_gather_no_grad, all_gather_with_grad, gather_sizes, global_offsets
from dmlscale.distributed.global_clip import DistributedClipLoss, DistributedSigLipLoss
from dmlscale.distributed.global_memory import DistributedCrossBatchMemory
from dmlscale.distributed.global_loss import DistributedLoss, DistributedMiner
from dmlscale.distributed.env import WorldInfo, init_process_group, world_info_from_env
from dmlscale.distributed.formation import (FormedGroup, GroupFormationError, current_group,
                                          set_default_group_timeout)
from dmlscale.distributed.heartbeat import StepHeartbeat
from dmlscale.distributed.pml_wrappers import DistributedLossWrapper, DistributedMinerWrapper
from dmlscale.distributed.sharded_classification import (ShardedArcFaceLoss, ShardedCosFaceLoss,
                                                         ShardedMarginSoftmaxLoss, ShardedNormalizedSoftmaxLoss)
from dmlscale.distributed.sharded_proxies import ShardedProxyAnchorLoss, ShardedProxyNCALoss
from dmlscale.distributed.sharded_softmax_heads import (ShardedLargeMarginSoftmaxLoss, ShardedSoftTripleLoss,
                                                        ShardedSphereFaceLoss, ShardedSubCenterArcFaceLoss)

__all__ = [
    "DistributedClipLoss",
    "DistributedCrossBatchMemory",
    "DistributedLoss",
    "DistributedLossWrapper",
    "DistributedMiner",
    "DistributedMinerWrapper",
    "DistributedSigLipLoss",
    "FormedGroup",
    "GroupFormationError",
    "ShardedArcFaceLoss",
    "ShardedCosFaceLoss",
    "ShardedLargeMarginSoftmaxLoss",
    "ShardedMarginSoftmaxLoss",
    "ShardedNormalizedSoftmaxLoss",
    "ShardedProxyAnchorLoss",
    "ShardedProxyNCALoss",
    "ShardedSoftTripleLoss",
    "ShardedSphereFaceLoss",
    "ShardedSubCenterArcFaceLoss",
    "StepHeartbeat",
    "WorldInfo",
    "all_gather_no_grad",
    "all_gather_with_grad",
    "current_group",
    "gather_sizes",
    "global_offsets",
    "init_process_group",
    "set_default_group_timeout",
    "world_info_from_env",
]
