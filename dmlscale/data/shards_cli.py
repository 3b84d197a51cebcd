"""`dmlscale shards`: write WebDataset tar shards from real digits, a folder of images, or a table.

    dmlscale shards --source digits --output DIR [--samples-per-shard N] [--seed S] [--image-size N]
    dmlscale shards --source folder --input FOLDER --output DIR [--captions txt|labels_from_subfolders]
                    [--test-fraction F] [--seed S]
    dmlscale shards --source table --input FILE.csv|FILE.jsonl --output DIR [--test-fraction F] [--seed S]

digits writes DIR/train and DIR/test; folder and table write DIR, or with --test-fraction F, DIR/train and
DIR/test (the layout `dmlscale train data.root=DIR` reads): a share F of the samples, drawn per class
(class subfolders, a label column) with --seed, goes to test. A bad image stops the command with its
path unless --skip-bad-images is given, which leaves it out and reports the count.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

SOURCES = ("digits", "folder", "table")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help=f"one of {', '.join(SOURCES)}")
    parser.add_argument("--output", required=True, help="output folder (digits: OUTPUT/train and OUTPUT/test)")
    parser.add_argument("--input", help="image folder (--source folder) or .csv/.jsonl table (--source table)")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--prefix", default="", help="shard file name prefix: PREFIX000000.tar, ...")
    parser.add_argument("--seed", type=int, default=0, help="the train/test split (and digits' caption choice)")
    parser.add_argument("--image-size", type=int, default=32, help="digits: side of the RGB images")
    parser.add_argument("--test-fraction", type=float, default=None, metavar="F",
                        help="share of the samples written to OUTPUT/test, the rest to OUTPUT/train, stratified by "
                             "class when the samples have labels (digits: default 0.25; folder/table: default no "
                             "split, everything in OUTPUT)")
    parser.add_argument("--captions", default="txt", help="folder: txt (same-stem .txt files) or "
                        "labels_from_subfolders (class subfolders)")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="folder/table: leave out unreadable images instead of failing")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar (default: when stderr is a terminal)")


def main_from_args(args: argparse.Namespace) -> dict:
    from dmlscale.data import sources
    from dmlscale.data.shards import describe_summary, write_shards

    if args.source not in SOURCES:
        raise ValueError(f"--source {args.source!r} is not known; allowed: {list(SOURCES)}")
    fraction = args.test_fraction
    if fraction is not None and not 0 < fraction < 1:  # also NaN
        raise ValueError(f"--test-fraction must be a number in (0, 1) (the share of samples written to "
                         f"{args.output}/test), got {fraction}")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    started = time.perf_counter()
    if args.source == "digits":
        if args.input is not None:
            raise ValueError(f"--input {args.input!r} has no effect with --source digits; leave it out")
        summaries = sources.write_digits_shards(
            args.output, samples_per_shard=args.samples_per_shard, seed=args.seed, image_size=args.image_size,
            test_fraction=0.25 if fraction is None else fraction, prefix=args.prefix,
            progress=progress)
        for split, summary in summaries.items():
            print(f"dmlscale shards: {split}: {describe_summary(summary)}")
    else:
        if args.input is None:
            raise ValueError(f"--source {args.source} needs --input ({'a folder' if args.source == 'folder' else 'a .csv or .jsonl file'})")
        on_bad_image = "skip" if args.skip_bad_images else "raise"
        if args.source == "folder":
            source = sources.folder_samples(args.input, captions=args.captions, on_bad_image=on_bad_image)
        else:
            source = sources.table_samples(args.input, on_bad_image=on_bad_image)
        if fraction is None:
            parts = {"all": (source, Path(args.output))}
        else:
            try:
                train, test = source.split(fraction, seed=args.seed)
            except ValueError as error:
                raise ValueError(f"--test-fraction {fraction}: {error}") from None
            parts = {"train": (train, Path(args.output) / "train"), "test": (test, Path(args.output) / "test")}
        summaries = {}
        for split, (part, folder) in parts.items():
            summary = write_shards(part, folder, samples_per_shard=args.samples_per_shard, prefix=args.prefix,
                                   progress=progress)
            summary["skipped"] = list(part.skipped)
            summaries[split] = summary
            print(f"dmlscale shards: {'' if split == 'all' else split + ': '}{describe_summary(summary)}")
        skipped = [path for summary in summaries.values() for path in summary["skipped"]]
        if skipped:
            shown = ", ".join(repr(path) for path in skipped[:5])
            print(f"dmlscale shards: skipped {len(skipped)} unreadable images: {shown}"
                  + (", ..." if len(skipped) > 5 else ""))
    print(f"dmlscale shards: done in {time.perf_counter() - started:.2f} s")
    return summaries
