"""`dmlscale shards`: write WebDataset tar shards from real digits, a folder of images, or a table.

    dmlscale shards --source digits --output DIR [--samples-per-shard N] [--seed S] [--image-size N]
    dmlscale shards --source folder --input FOLDER --output DIR [--captions txt|labels_from_subfolders]
    dmlscale shards --source table --input FILE.csv|FILE.jsonl --output DIR

digits writes DIR/train and DIR/test; folder and table write DIR. A bad image stops the command with
its path unless --skip-bad-images is given, which leaves it out and reports the count.
"""

from __future__ import annotations

import argparse
import sys
import time

SOURCES = ("digits", "folder", "table")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help=f"one of {', '.join(SOURCES)}")
    parser.add_argument("--output", required=True, help="output folder (digits: OUTPUT/train and OUTPUT/test)")
    parser.add_argument("--input", help="image folder (--source folder) or .csv/.jsonl table (--source table)")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--prefix", default="", help="shard file name prefix: PREFIX000000.tar, ...")
    parser.add_argument("--seed", type=int, default=0, help="digits: train/test split and caption choice")
    parser.add_argument("--image-size", type=int, default=32, help="digits: side of the RGB images")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="digits: stratified test share")
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
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    started = time.perf_counter()
    if args.source == "digits":
        if args.input is not None:
            raise ValueError(f"--input {args.input!r} has no effect with --source digits; leave it out")
        summaries = sources.write_digits_shards(
            args.output, samples_per_shard=args.samples_per_shard, seed=args.seed, image_size=args.image_size,
            test_fraction=args.test_fraction, prefix=args.prefix, progress=progress)
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
        summary = write_shards(source, args.output, samples_per_shard=args.samples_per_shard, prefix=args.prefix,
                               progress=progress)
        summary["skipped"] = list(source.skipped)
        summaries = {"all": summary}
        print(f"dmlscale shards: {describe_summary(summary)}")
        if source.skipped:
            shown = ", ".join(repr(path) for path in source.skipped[:5])
            print(f"dmlscale shards: skipped {len(source.skipped)} unreadable images: {shown}"
                  + (", ..." if len(source.skipped) > 5 else ""))
    print(f"dmlscale shards: done in {time.perf_counter() - started:.2f} s")
    return summaries
