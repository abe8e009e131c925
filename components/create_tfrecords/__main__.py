"""Command line: ``python -m components.create_tfrecords --output-dir DIR (--csv PATH --labels
PATH | --image-dir ROOT) [options] [Beam pipeline args]``.

Arguments this command does not know are passed to Beam as pipeline arguments: for
Dataflow, ``--runner DataflowRunner --project=p --region=r --temp_location=gs://b/tmp``
and optionally ``--machine_type=n2-standard-4 --max_num_workers=20
--service_account_email=<workers' service account> --dataflow_kms_key=<Cloud KMS key>
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

from components.common import cli
from components.create_tfrecords import beam_pipeline

# The inputs (one of two sources), with their flags' names; and what is no flag: Beam's
# own arguments are the ones this command does not know.
SOURCES = ("csv_uri", "image_dir")
FLAGS = {"csv_uri": "--csv", "labels_uri": "--labels"}
NOT_FLAGS = ("beam_args", "dataflow")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Parses the command line; returns the known options and the Beam pipeline args.

    The options are a flag for each parameter of the stage function, which types,
    documents and defaults it (``common.cli``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m components.create_tfrecords",
        description="Labelled images (a uri,label CSV or a <label>/<image> folder tree) to "
        "sharded TFRecords with a stable train/valid/test split.",
        epilog="Other arguments are passed to Beam as pipeline arguments, e.g. --project=p "
        "--region=r --temp_location=gs://b/tmp --sdk_container_image=IMAGE for Dataflow.",
    )
    run = beam_pipeline.run
    source = parser.add_mutually_exclusive_group(required=True)
    cli.add_function_arguments(source, run, SOURCES, flags=FLAGS, fill_defaults=True)
    names = cli.parameter_names(run, leaving_out=(*SOURCES, *NOT_FLAGS))
    cli.add_function_arguments(parser, run, names, flags=FLAGS, fill_defaults=True)
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the stage from the command line; returns the process exit status."""
    args, beam_args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        stats = beam_pipeline.run(**vars(args), beam_args=beam_args)
    except (ValueError, FileNotFoundError) as e:
        print(f"create_tfrecords: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(stats, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
