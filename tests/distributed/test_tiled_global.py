"""Streamed (tiled) distributed losses on real gloo processes, world sizes 2 and 4, unequal local batches:
CLIP, SigLIP, DistributedLoss(SupCon) and DistributedLoss(NTXent) with tiles smaller than the local
batches give the materialised distributed loss and one process on the concatenated batch, loss values
and every gradient (features, logit_scale, logit_bias), float64 within 1e-10 and float32 within 1e-5.
One spawn per world size runs every case."""

import pytest
import torch

from dmlscale import losses
from dmlscale.distances import LpDistance
from dmlscale.distributed import DistributedClipLoss, DistributedLoss, DistributedSigLipLoss
from tests.distributed.launch import results, run_world
from tests.losses.test_ntxent_supcon_parity import LargestTensor
from tests.parity import assert_close

DIM, NUM_CLASSES, TILE = 5, 3, 3
TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-5}
SIZES = {2: [5, 8], 4: [4, 7, 2, 6]}  # unequal; TILE divides none of them
PROBE = (32, 4, 8)  # memory probe: local pairs, feature size, tile


def global_batch(total: int, dtype):
    gen = torch.Generator().manual_seed(7)
    img_ND, txt_ND = torch.nn.functional.normalize(torch.randn(2, total, DIM, generator=gen, dtype=torch.float64),
                                                   dim=2)
    labels_N = torch.arange(total) % NUM_CLASSES
    labels_N = labels_N[torch.randperm(total, generator=gen)]
    scale, bias = torch.tensor([9.0], dtype=torch.float64), torch.tensor([-4.0], dtype=torch.float64)
    return [t.to(dtype) for t in (img_ND, txt_ND, scale, bias)] + [labels_N]


def pair_losses(tiled: bool | None, distributed: bool, tile: int = TILE):
    """name -> loss module for one path; distributed=False: the plain single-process loss."""
    tiling = dict(tiled=bool(tiled), tile_size=tile)
    if distributed:
        return {"clip": DistributedClipLoss(**tiling), "siglip": DistributedSigLipLoss(**tiling),
                "supcon": DistributedLoss(losses.SupConLoss(temperature=0.3, **tiling)),
                "ntxent": DistributedLoss(losses.NTXentLoss(temperature=0.3, **tiling)),
                "ntxent-l2sq": DistributedLoss(losses.NTXentLoss(temperature=0.5, distance=LpDistance(power=2),
                                                                 **tiling))}
    return {"clip": losses.ClipLoss(tiled=False), "siglip": losses.SigLipLoss(tiled=False),
            "supcon": losses.SupConLoss(temperature=0.3, tiled=False),
            "ntxent": losses.NTXentLoss(temperature=0.3, tiled=False),
            "ntxent-l2sq": losses.NTXentLoss(temperature=0.5, distance=LpDistance(power=2), tiled=False)}


def value_and_grads(name, loss, img, txt, scale, bias, labels):
    leaves = [t.detach().clone().requires_grad_(True) for t in (img, txt, scale, bias)]
    if name in ("clip", "siglip"):
        value = loss(*leaves)
    else:  # metric losses: images and texts as two views of each labelled sample
        value = loss(torch.cat([leaves[0], leaves[1]]), torch.cat([labels, labels]))
    value.backward()
    return float(value.detach().double()), [torch.zeros_like(x) if x.grad is None else x.grad for x in leaves]


def largest_tensor_of_tiled_paths(rank, num_local: int, dim: int, tile: int) -> dict:
    """name -> the most elements of any tensor made in forward+backward of the streamed path, on a
    batch where the local n x N matrix is far larger than the gathered features and a tile."""
    gen = torch.Generator().manual_seed(rank)
    img, txt = torch.nn.functional.normalize(torch.randn(2, num_local, dim, generator=gen, dtype=torch.float64), dim=2)
    ids = torch.arange(num_local) + rank * num_local  # one class per pair (the SimCLR layout): P = 2n
    scale, bias = torch.tensor([5.0], dtype=torch.float64), torch.tensor([-2.0], dtype=torch.float64)
    largest = {}
    for name, loss in pair_losses(True, distributed=True, tile=tile).items():
        with LargestTensor() as probe:
            value_and_grads(name, loss, img, txt, scale, bias, ids)
        largest[name] = probe.max_numel
    return largest


def worker(rank, world_size, sizes):
    out = {"largest": largest_tensor_of_tiled_paths(rank, *PROBE)}
    start, stop = sum(sizes[:rank]), sum(sizes[:rank + 1])
    for dtype in TOLERANCES:
        img, txt, scale, bias, labels = global_batch(sum(sizes), dtype)
        local = (img[start:stop], txt[start:stop], scale, bias, labels[start:stop])
        for tiled in (True, False):
            for name, loss in pair_losses(tiled, distributed=True).items():
                out[(str(dtype), name, tiled)] = value_and_grads(name, loss, *local)
    return out


@pytest.mark.parametrize("world_size", sorted(SIZES))
def test_tiled_distributed_losses_are_exact(world_size):
    sizes = SIZES[world_size]
    per_rank = results(run_world(worker, world_size, sizes))
    offsets = [sum(sizes[:r]) for r in range(world_size)]
    for dtype, tol in TOLERANCES.items():
        img, txt, scale, bias, labels = global_batch(sum(sizes), dtype)
        for name, loss in pair_losses(None, distributed=False).items():
            ref_value, ref_grads = value_and_grads(name, loss, img, txt, scale, bias, labels)
            assert ref_value > 0.1
            for tiled in (True, False):
                what = f"{name} {dtype} tiled={tiled} W={world_size}"
                for rank, out in enumerate(per_rank):
                    value, grads = out[(str(dtype), name, tiled)]
                    assert_close(value, ref_value, tol, f"{what} rank {rank} value")
                    rows = slice(offsets[rank], offsets[rank] + sizes[rank])
                    # feature gradients: W x this rank's rows of the global gradient (DistributedLoss's convention)
                    for i in (0, 1):
                        assert_close(grads[i] / world_size, ref_grads[i][rows], tol, f"{what} rank {rank} grad {i}")
                    if tiled:  # the streamed and the materialised path agree rank by rank
                        plain_grads = out[(str(dtype), name, False)][1]
                        for i in (0, 1):
                            assert_close(grads[i], plain_grads[i], tol, f"{what} rank {rank} tiled vs plain grad {i}")
                # logit_scale / logit_bias: each rank holds its share (CLIP's tiled and plain paths split the
                # global sum differently); their data-parallel mean is exact
                for i in (2, 3):
                    mean_grad = sum(out[(str(dtype), name, tiled)][1][i] for out in per_rank) / world_size
                    assert_close(mean_grad, ref_grads[i], tol, f"{what} grad {i}")
            if name in ("clip", "siglip"):
                assert ref_grads[2].abs().sum() > 0 and (name == "clip" or ref_grads[3].abs().sum() > 0)
    # no rank holds more than a tile of the matrix: the largest tensor is the gathered features (2 views
    # for the metric losses), far below this rank's n x N block of logits
    num_local, dim, tile = PROBE
    num_global = world_size * num_local
    for out in per_rank:
        for name, largest in out["largest"].items():
            views = 1 if name in ("clip", "siglip") else 2
            assert largest <= max(views * num_global * dim, tile * tile), (name, largest)
            assert largest * 4 < (views * num_local) * (views * num_global), (name, largest)
