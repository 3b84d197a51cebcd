"""Image-text loading throughput: dmlscale's loader vs open_clip_train's get_wds_dataset, on the same
shards with the same preprocessing (open_clip's training transform), tokenizer, batch size and
workers, in one run; plus bare tar iteration (reading every member's bytes, no decoding), the limit.

Run:  .venv/bin/python benchmarks/data_throughput.py [--shards 'DIR/{000000..000009}.tar'] [--workers 2]
          [--batch-size 64] [--image-size 224] [--stored-size 32] [--repeats 3]

Without --shards it writes the real digits (dmlscale shards --source digits; --stored-size sets the
side of the stored JPEGs) to a temporary folder. Each loader runs one full epoch per repeat, worker
start-up included (both start workers per epoch here); the table gives the best repeat of each,
measured alternately so that load from other processes hits both alike. open_clip's sample shuffle
buffer is 5000 (1000 before the first sample); dmlscale's is --shuffle-buffer (default 1000).

open_clip_train runs with the two workarounds of open_clip_compat.py (a pandas placeholder, webdataset
1.0's end-of-shard marker switched off); everything else is open_clip's.
"""

from __future__ import annotations

import argparse
import os
import tarfile
import tempfile
import time

from open_clip_compat import import_open_clip_data


def bare_tar(shards: list[str]) -> int:
    """Read every member's bytes of every shard; return the number of samples (.txt members)."""
    count = 0
    for path in shards:
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                if member.isfile():
                    tar.extractfile(member).read()
                    count += member.name.endswith(".txt")
    return count


def open_clip_epoch(pattern, preprocess, tokenizer, args) -> int:
    data = import_open_clip_data()
    options = argparse.Namespace(train_data=pattern, train_num_samples=None, dataset_resampled=False, seed=0,
                                 batch_size=args.batch_size, workers=args.workers, world_size=1,
                                 train_data_upsampling_factors=None)
    info = data.get_wds_dataset(options, preprocess, is_train=True, epoch=0, tokenizer=tokenizer)
    return sum(images.shape[0] for images, _ in info.dataloader)


def dmlscale_epoch(pattern, preprocess, tokenizer, args) -> int:
    from dmlscale.data.pipeline import make_loader

    loader = make_loader(pattern, batch_size=args.batch_size, num_workers=args.workers, seed=0,
                         shuffle_buffer=args.shuffle_buffer, image_transform=preprocess, tokenizer=tokenizer)
    return sum(batch["image"].shape[0] for batch in loader)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", help="brace pattern of tar shards with a sizes.json beside them")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224, help="model input side (open_clip transform)")
    parser.add_argument("--stored-size", type=int, default=32, help="side of the digit JPEGs written without --shards")
    parser.add_argument("--samples-per-shard", type=int, default=100)
    parser.add_argument("--shuffle-buffer", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import open_clip
    import torch

    torch.set_num_threads(1)  # the workers do the work; keep the main process from competing
    temporary = None
    pattern = args.shards
    if pattern is None:
        from dmlscale.data.digits import write_digits_shards

        temporary = tempfile.TemporaryDirectory()
        summary = write_digits_shards(temporary.name, samples_per_shard=args.samples_per_shard,
                                      image_size=args.stored_size)["train"]
        pattern = os.path.join(summary["output_dir"], f"{{000000..{len(summary['shards']) - 1:06d}}}.tar")
    from braceexpand import braceexpand

    shards = [path for part in pattern.split("::") for path in braceexpand(part)]
    if not all(os.path.isfile(path) for path in shards):
        raise SystemExit(f"missing shards in {pattern!r}: {[p for p in shards if not os.path.isfile(p)][:3]}")
    preprocess = open_clip.image_transform(args.image_size, is_train=True)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    size_mib = sum(os.path.getsize(p) for p in shards) / 2**20
    print(f"{len(shards)} shards ({size_mib:.1f} MiB), batch {args.batch_size}, {args.workers} workers, "
          f"input {args.image_size}px, {os.cpu_count()} CPUs")

    runs = {"bare tar": lambda: bare_tar(shards),
            "open_clip": lambda: open_clip_epoch(pattern, preprocess, tokenizer, args),
            "dmlscale": lambda: dmlscale_epoch(pattern, preprocess, tokenizer, args)}
    best = {name: 0.0 for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            samples = run()
            best[name] = max(best[name], samples / (time.perf_counter() - started))
    print(f"{'loader':<12}{'samples/s':>12}{'vs open_clip':>14}")
    for name, rate in best.items():
        print(f"{name:<12}{rate:>12.0f}{rate / best['open_clip']:>13.2f}x")
    print(f"dmlscale / open_clip = {best['dmlscale'] / best['open_clip']:.2f}x")
    if temporary is not None:
        temporary.cleanup()


if __name__ == "__main__":
    main()
