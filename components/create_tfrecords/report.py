"""The run's Markdown summary (``report.md``, and the component's ``report`` artifact
that the KFP and Vertex UIs render): images per split and class, rejected inputs by
reason with examples, skipped inputs, conversions, stored image sizes, shards and bytes.
"""

from __future__ import annotations

from typing import Any

from components.common import schema
from components.create_tfrecords.stats import LONG_SIDE_BUCKETS, long_side_bucket

_MB = 1024 * 1024
_DETAIL_CHARS = 200


def _cell(value: Any) -> str:
    """Text safe in a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ").replace("`", "'")


def _mb(nbytes: int) -> str:
    return f"{nbytes / _MB:.2f} MiB"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def render_report(stats: dict[str, Any], source: str = "", output_dir: str = "") -> str:
    """The Markdown report of one run, from its ``stats.json`` counts."""
    kept, rejected = stats["kept"], stats["rejected"]
    total = kept + rejected
    lines = ["# create_tfrecords report", ""]
    if source:
        lines += [f"Input: `{_cell(source)}`  "]
    if output_dir:
        lines += [f"Dataset: `{_cell(output_dir)}`  "]
    share = f" ({rejected / total:.1%})" if total else ""
    lines += [
        f"**{kept} images kept**, {rejected} inputs rejected{share}, "
        f"{len(stats['labels'])} labels.",
        "",
        "## Images per split and class",
        "",
    ]
    rows = [
        [label, *(stats["classes"][s][label] for s in schema.SPLITS)]
        + [sum(stats["classes"][s][label] for s in schema.SPLITS)]
        for label in stats["labels"]
    ]
    if "objects" in stats:  # Detection: the classes count objects.
        lines[-2] = "## Objects per split and class"
        for name, counts in (
            ("**objects**", stats["objects"]),
            ("**images**", stats["splits"]),
            ("images without objects", stats["images_without_objects"]),
        ):
            rows.append([name, *(counts[s] for s in schema.SPLITS), sum(counts.values())])
        lines += _table(["class", *schema.SPLITS, "total"], rows)
        lines += [f"{stats['clipped_boxes']} boxes clipped to their image.", ""]
    else:
        rows.append(["**total**", *(stats["splits"][s] for s in schema.SPLITS), kept])
        lines += _table(["class", *schema.SPLITS, "total"], rows)

    lines += ["## Rejected inputs", ""]
    if rejected:
        rows = []
        for reason, n in stats["rejected_by_reason"].items():
            examples = stats.get("rejected_examples", {}).get(reason, [])
            shown = "; ".join(f"{uri}: {detail[:_DETAIL_CHARS]}" for uri, detail in examples)
            rows.append([reason, n, shown])
        lines += _table(["reason", "count", "examples"], rows)
        lines += [f"Every rejected input and its reason: `{schema.ERRORS_FILE}`.", ""]
    else:
        lines += ["None.", ""]

    ignored = {k: n for k, n in stats.get("ignored", {}).items() if n}
    if ignored:
        lines += ["## Skipped without rejection", ""]
        lines += _table(["what", "count"], [[k, n] for k, n in sorted(ignored.items())])

    conversions = stats.get("conversions", {})
    lines += ["## Conversions", ""]
    lines += [
        f"{stats['reencoded']} images re-encoded as JPEG (the others keep their original bytes).",
        "",
    ]
    lines += _table(["change", "images"], [[k, n] for k, n in conversions.items()])

    sizes = stats.get("image_sizes")
    if sizes:
        lines += ["## Stored image sizes (pixels)", ""]
        lines += _table(
            ["", "min", "median", "max"],
            [
                [dim, *(sizes[dim][k] for k in ("min", "median", "max"))]
                for dim in ("width", "height")
            ],
        )
        histogram = sizes["long_side_histogram"]
        buckets = [long_side_bucket(lower) for lower in LONG_SIDE_BUCKETS]
        used = [i for i, bucket in enumerate(buckets) if histogram.get(bucket)]
        if used:  # The buckets from the first to the last one holding images.
            shown = buckets[used[0] : used[-1] + 1]
            lines += _table(["long side", "images"], [[b, histogram[b]] for b in shown])

    shards = stats.get("shards", {})
    lines += ["## Shards", ""]
    rows = [
        [
            split,
            stats["splits"][split],
            shards.get(split, {}).get("files", ""),
            _mb(shards.get(split, {}).get("bytes", 0)),
            _mb(stats.get("image_bytes_by_split", {}).get(split, 0)),
        ]
        for split in schema.SPLITS
    ]
    lines += _table(["split", "images", "shards", "bytes written", "image bytes"], rows)
    sharding = stats.get("sharding")
    if sharding:
        if sharding.get("num_shards_forced"):
            how = f"forced by num_shards={sharding['num_shards_forced']}"
        else:
            how = (
                f"about {sharding['target_shard_mb']} MiB each, from the image bytes each "
                "split stores"
            )
        lines += [f"Shard counts {how}.", ""]
    return "\n".join(lines)
