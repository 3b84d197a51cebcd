"""The single-machine measurements the scaling model starts from, taken in one fresh process with pinned threads.

- dmlscale tile time: DistributedClipLoss / DistributedSigLipLoss (one process, tiled) forward+backward
  at N = k T, fastest of `repeats`, divided by the k^2 tiles. Every time here is CPU time of the process
  (time.process_time), so that other load on a shared machine does not inflate it.
- dmlscale tile workspace: the peak extra memory of one step at N = T (one tile) minus the buffers the model
  counts for one process (scaling_formulas.memory_bytes with W = 1, workspace 0).
- open_clip: ClipLoss (one process) at N0 pairs: seconds and bytes per logit of the N0 x N0 matrix
  (both directions), the memory after the counted input gradients.
- this machine's GEMM rate (T x T x D products) and the stated model's forward+backward per pair (an
  open_clip model, random weights, nothing downloaded).
Peak memory is process_counters.PeakMemory (resident high-water mark, freed memory released at once).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from process_counters import PeakMemory, release_freed_memory
from scaling_formulas import Calibration, memory_bytes

if TYPE_CHECKING:
    import torch


def cpu_seconds(step: Callable[[], object]) -> float:
    """CPU seconds (all threads, user + system) this process spent in step(): its compute, not time it
    waited for a core that other processes held."""
    start = time.process_time()
    step()
    return time.process_time() - start


def _fastest(step: Callable[[], object], repeats: int) -> float:
    return min(cpu_seconds(step) for _ in range(repeats))


def pair_inputs(num_pairs: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm image and text features (num_pairs x dim, float32) that require gradients."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    img, txt = (torch.nn.functional.normalize(torch.randn(num_pairs, dim, generator=gen), dim=1) for _ in range(2))
    return img.requires_grad_(True), txt.requires_grad_(True)


def loss_step(path: str, num_pairs: int, dim: int, tile: int, *, rank: int = 0, world_size: int = 1,
              offset: int = 0, global_pairs: int | None = None) -> Callable[[], None]:
    """A closure running one forward+backward of `path` on this rank's pairs (rows offset.. of the global batch)."""
    import torch

    global_pairs = num_pairs if global_pairs is None else global_pairs
    img_all, txt_all = pair_inputs(global_pairs, dim)
    img = img_all.detach()[offset:offset + num_pairs].clone().requires_grad_(True)
    txt = txt_all.detach()[offset:offset + num_pairs].clone().requires_grad_(True)
    del img_all, txt_all
    scale, bias = torch.tensor(14.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    if path == "open_clip":
        from open_clip.loss import ClipLoss

        loss_fn = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size)
        run = lambda: loss_fn(img, txt, scale)  # noqa: E731
    elif path == "dmlscale_clip":
        from dmlscale.distributed.global_clip import DistributedClipLoss

        loss_fn = DistributedClipLoss(tiled=True, tile_size=tile)
        run = lambda: loss_fn(img, txt, scale)  # noqa: E731
    else:
        from dmlscale.distributed.global_clip import DistributedSigLipLoss

        loss_fn = DistributedSigLipLoss(tiled=True, tile_size=tile)
        run = lambda: loss_fn(img, txt, scale, bias)  # noqa: E731

    def step() -> None:
        run().backward()
        for tensor in (img, txt, scale, bias):  # the gradients count in this step's peak, not in the next one's
            tensor.grad = None

    return step


def peak_extra_bytes(step: Callable[[], None]) -> int:
    """Peak extra resident memory of step() (its inputs already exist)."""
    with PeakMemory() as peak:
        step()
    return peak.extra_bytes


def _gemm_flops(tile: int, dim: int, repeats: int) -> float:
    import torch

    a, b = torch.randn(tile, dim), torch.randn(dim, tile)
    return 2 * tile * tile * dim / _fastest(lambda: a @ b, repeats)


def _model_seconds_per_pair(model_name: str, repeats: int) -> float:
    import open_clip
    import torch

    model = open_clip.create_model(model_name)
    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    pairs = 2
    images = torch.randn(pairs, 3, *size)
    tokens = torch.randint(0, model.vocab_size, (pairs, model.context_length))

    def step() -> None:
        model.zero_grad(set_to_none=True)
        image_features, text_features = model.encode_image(images), model.encode_text(tokens)
        (image_features.sum() + text_features.sum()).backward()

    step()  # warm-up
    return _fastest(step, repeats) / pairs


def calibrate(*, dim: int, tile: int, threads: int, repeats: int, tiles_per_side: int, open_clip_pairs: int,
              model_name: str) -> dict:
    """Every measured field of Calibration except the loopback bandwidth (which needs two processes)."""
    import torch

    torch.set_num_threads(threads)
    release_freed_memory()
    bytes_per_value = 4  # float32 features, as open_clip's training computes its loss
    counted = Calibration(dim=dim, tile=tile, bytes_per_value=bytes_per_value, tile_seconds={},
                          tile_workspace_bytes={"dmlscale_clip": 0, "dmlscale_siglip": 0},
                          open_clip_seconds_per_logit=0.0, open_clip_bytes_per_logit=0.0, model_seconds_per_pair=0.0,
                          gemm_flops_per_second=0.0, loopback_bytes_per_second=1.0,
                          loopback_cpu_seconds_per_byte=0.0)
    fields = {"dim": dim, "tile": tile, "bytes_per_value": bytes_per_value, "tile_seconds": {},
              "tile_workspace_bytes": {}}
    for path in ("dmlscale_clip", "dmlscale_siglip"):
        loss_step(path, 64, dim, tile)()  # warm-up: first-call allocations are not the step's
        extra = peak_extra_bytes(loss_step(path, tile, dim, tile))
        fields["tile_workspace_bytes"][path] = int(extra - memory_bytes(path, tile, 1, counted))
        step = loss_step(path, tiles_per_side * tile, dim, tile)
        step()
        fields["tile_seconds"][path] = _fastest(step, repeats) / tiles_per_side**2
    loss_step("open_clip", 64, dim, tile)()
    step = loss_step("open_clip", open_clip_pairs, dim, tile)
    extra = peak_extra_bytes(step)
    fields["open_clip_bytes_per_logit"] = (extra - 2 * open_clip_pairs * dim * bytes_per_value) / open_clip_pairs**2
    fields["open_clip_seconds_per_logit"] = _fastest(step, repeats) / open_clip_pairs**2
    fields["gemm_flops_per_second"] = _gemm_flops(tile, dim, max(repeats, 3))
    fields["model_seconds_per_pair"] = _model_seconds_per_pair(model_name, repeats)
    return fields
