"""Command line: ``python -m components.create_tfrecords --output-dir DIR (--csv PATH --labels
PATH | --image-dir ROOT) [options] [Beam pipeline args]``.

Arguments this command does not know are passed to Beam as pipeline arguments: for
Dataflow, ``--runner DataflowRunner --project=p --region=r --temp_location=gs://b/tmp``
and optionally ``--machine_type=n2-standard-4 --max_num_workers=20
--sdk_container_image=<the stage's dataflow-worker image> --sdk_location=container``.
Prints the counts (``stats.json``) as JSON (the Markdown summary is ``report.md`` in the
output directory); exits with status 1 and a message when the run fails on its input (too
many rejected images, no image, a missing file).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from components.common.cli import defaults
from components.create_tfrecords import beam_pipeline


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Parses the command line; returns the known options and the Beam pipeline args."""
    default = defaults(beam_pipeline.run)
    parser = argparse.ArgumentParser(
        prog="python -m components.create_tfrecords",
        description="Labelled images (a uri,label CSV or a <label>/<image> folder tree) to "
        "sharded TFRecords with a stable train/valid/test split.",
        epilog="Other arguments are passed to Beam as pipeline arguments, e.g. --project=p "
        "--region=r --temp_location=gs://b/tmp --sdk_container_image=IMAGE for Dataflow.",
    )
    parser.add_argument("--output-dir", required=True, help="dataset directory to write")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", default="", help="CSV of uri,label lines (needs --labels)")
    source.add_argument("--image-dir", default="", help="root of a <label>/<image> folder tree")
    parser.add_argument("--labels", default="", help="label file, one label per line")
    parser.add_argument("--train-fraction", type=float, default=default["train_fraction"])
    parser.add_argument("--valid-fraction", type=float, default=default["valid_fraction"])
    parser.add_argument(
        "--num-shards",
        type=int,
        default=default["num_shards"],
        help="per split; 0 = from the bytes each split stores",
    )
    parser.add_argument(
        "--target-shard-mb",
        type=float,
        default=default["target_shard_mb"],
        help="shard size (MiB) the count is derived for when --num-shards is 0",
    )
    parser.add_argument(
        "--max-image-side",
        type=int,
        default=default["max_image_side"],
        help="scale larger images down; 0 = off",
    )
    parser.add_argument(
        "--max-error-fraction",
        type=float,
        default=default["max_error_fraction"],
        help="fail when a larger share of the input is rejected",
    )
    parser.add_argument("--runner", default=default["runner"], help="Beam runner")
    parser.add_argument(
        "--direct-num-workers",
        type=int,
        default=default["direct_num_workers"],
        help="DirectRunner processes: 1 = this process, 0 = one per core (multi-process mode)",
    )
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the stage from the command line; returns the process exit status."""
    args, beam_args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        stats = beam_pipeline.run(
            output_dir=args.output_dir,
            csv_uri=args.csv,
            labels_uri=args.labels,
            image_dir=args.image_dir,
            train_fraction=args.train_fraction,
            valid_fraction=args.valid_fraction,
            num_shards=args.num_shards,
            target_shard_mb=args.target_shard_mb,
            max_image_side=args.max_image_side,
            max_error_fraction=args.max_error_fraction,
            runner=args.runner,
            beam_args=beam_args,
            direct_num_workers=args.direct_num_workers,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"create_tfrecords: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(stats, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
