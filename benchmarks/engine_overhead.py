"""What dmlscale's DeepSpeed engine adds to a training step, and what each overhead cut (issue 14) saves.

Run:  .venv/bin/python benchmarks/engine_overhead.py [--blocks 12] [--steps 10] [--threads 1]
          [--batch-size 128] [--model dml-quickstart-rn] [--warmup 3] [--zero-stage 0]

One process, one rank, ZeRO-0 (or --zero-stage), fp32, the quickstart model (open_clip ModifiedResNet width
16 + 2-layer text transformer) on a fixed random batch of 32x32 images and 16-token captions (no loader: the
step only), the distributed CLIP loss, clipping at 1.0, AdamW. The rows:
  torch       plain torch: forward, dmlscale's loss, backward, clip_grad_norm_, torch's default AdamW
              (single-tensor on the CPU); `torch, fused AdamW` the same with the fused kernel
  before      the engine as it was: single-tensor AdamW, the one-rank all-reduce (flatten, reduce, copy back),
              DeepSpeed's clipping and a separate gradient-norm probe
  after       the engine now: fused AdamW (where torch has it, else foreach), no one-rank all-reduce, one
              multi-tensor norm that clips and is logged
  after - X   `after` with one cut switched off (X: the old AdamW, the all-reduce, or the separate probe)
Every row runs `steps` steps per block, the rows alternate within a block (their order rotates from
block to block, so that load from other processes hits them alike); the table gives each row's median
step over all blocks (after `warmup` untimed steps) and its ratio to the `torch` row. Torch's threads are
pinned with --threads; the load average is printed before and after. On a quiet 2-core machine the
default run takes about 12 blocks x 7 rows x 10 steps x ~0.12 s = 100 s, plus 10-20 s of start-up.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

ROWS = {  # name -> build_engine switches (a torch.optim.AdamW keyword dict for the plain torch rows)
    "torch": {"torch": {}},
    "torch, fused AdamW": {"torch": {"fused": True}},
    "before": {"adamw_implementation": "single_tensor", "skip_single_rank_allreduce": False,
               "record_grad_norm": False},
    "after": {},
    "after - fused AdamW (single-tensor)": {"adamw_implementation": "single_tensor"},
    "after - all-reduce skip": {"skip_single_rank_allreduce": False},
    "after - norm folded into clipping (separate probe)": {"record_grad_norm": False},
}
CLIP_NORM, LR = 1.0, 2e-3


def make_batch(batch_size: int, *, image_size: int, context_length: int, vocab_size: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    return {"image": torch.randn(batch_size, 3, image_size, image_size, generator=gen),
            "text": torch.randint(1, vocab_size, (batch_size, context_length), generator=gen)}


def torch_step_fn(model, loss_fn, adamw_options: dict):
    """The plain torch anchor: what open_clip's training loop does per step on one process."""
    from dmlscale.train.engine import param_groups

    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=LR, betas=(0.9, 0.98), eps=1e-6, **adamw_options)

    def step(batch: dict) -> None:
        out = model(image=batch["image"], text=batch["text"])
        loss_fn(out["image_features"], out["text_features"], out["logit_scale"]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step, optimizer


def engine_step_fn(model, loss_fn, batch_size: int, switches: dict, zero_stage: int):
    from dmlscale.train.engine import build_engine, engine_contrastive_step
    from dmlscale.train.step_metrics import GradNormProbe

    engine = build_engine(model, zero_stage=zero_stage, precision="fp32", lr=LR, weight_decay=0.1,
                          gradient_clipping=CLIP_NORM, warmup_steps=0, total_steps=10**6, micro_batch_size=batch_size,
                          grad_accum_steps=1, **switches)
    probe = GradNormProbe(engine)
    forward = lambda chunk: engine(image=chunk["image"], text=chunk["text"])  # noqa: E731
    loss = lambda out: loss_fn(out["image_features"], out["text_features"], out["logit_scale"])  # noqa: E731

    def step(batch: dict) -> None:
        engine_contrastive_step(engine, [batch], forward, loss)
        assert probe.value() is not None  # the norm a log step would write
    return step, engine.dmlscale_base_optimizer


def implementation(optimizer: torch.optim.Optimizer) -> str:
    group = optimizer.param_groups[0]
    return "fused" if group.get("fused") else "foreach" if group.get("foreach") else "single-tensor (torch default)" \
        if group.get("foreach") is None else "single-tensor"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row and block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per row before the first block")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (pinned)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model", default="dml-quickstart-rn")
    parser.add_argument("--zero-stage", type=int, default=0, choices=(0, 1, 2, 3),
                        help="ZeRO stage of the engine rows (the all-reduce skip and the folded norm are ZeRO-0 only)")
    args = parser.parse_args()
    for name in ("blocks", "steps", "threads", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    torch.set_num_threads(args.threads)
    from dmlscale.distributed import DistributedClipLoss
    from dmlscale.distributed.env import ensure_process_group
    from dmlscale.models import build_open_clip
    from dmlscale.train.deepspeed_quiet import deepspeed

    ensure_process_group()
    torch.manual_seed(0)
    model = build_open_clip(args.model).train()
    visual = model.visual
    batch = make_batch(args.batch_size, image_size=visual.image_size if isinstance(visual.image_size, int)
                       else visual.image_size[0], context_length=model.context_length, vocab_size=model.vocab_size)
    loss_fn = DistributedClipLoss()
    steps, optimizers = {}, {}
    for name, switches in ROWS.items():
        replica = copy.deepcopy(model)
        steps[name], optimizers[name] = (torch_step_fn(replica, loss_fn, switches["torch"]) if "torch" in switches
                                         else engine_step_fn(replica, loss_fn, args.batch_size, switches,
                                                             args.zero_stage))
        for _ in range(args.warmup):
            steps[name](batch)

    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in ROWS}
    names = list(ROWS)
    for block in range(args.blocks):
        for name in names[block % len(names):] + names[:block % len(names)]:
            for _ in range(args.steps):
                start = time.perf_counter()
                steps[name](batch)
                times[name].append(time.perf_counter() - start)
    load_after = os.getloadavg()

    print(f"torch {torch.__version__}, deepspeed {deepspeed.__version__}; model {args.model}, batch {args.batch_size}, "
          f"ZeRO-{args.zero_stage} fp32 on one rank; torch threads {torch.get_num_threads()} (interop "
          f"{torch.get_num_interop_threads()}), {len(os.sched_getaffinity(0))} usable cores")
    print(f"{args.blocks} blocks x {args.steps} steps per row, alternating; load average (1, 5, 15 min) "
          f"before {tuple(round(v, 2) for v in load_before)}, after {tuple(round(v, 2) for v in load_after)}")
    anchor = statistics.median(times["torch"])
    print(f"\n| {'row':<52} | median step | vs torch | AdamW |")
    print(f"| {'-' * 52} | ----------- | -------- | ----- |")
    for name in names:
        median = statistics.median(times[name])
        print(f"| {name:<52} | {median * 1e3:8.1f} ms | {median / anchor:7.3f}x | {implementation(optimizers[name])} |")


if __name__ == "__main__":
    main()
