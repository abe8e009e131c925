"""The whole pipeline under kfp local's two runners, on the same images and settings:

- baseline: every stage in a subprocess of this environment (``--runner subprocess``);
- images: every stage in its stage image (``--runner docker``, kfp local's DockerRunner
  set up by ``pipelines.local_docker``; build the images first with ``make images``).

Prints each stage's seconds (from one executor output written to the next: kfp local runs
the tasks one after another) and the whole run's, and the ratio images / baseline.

Run: ``.venv/bin/python bench/runners.py`` (``--per-class N``, ``--repeat N``).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.machine import cpu_model, load_average, usable_cpus  # noqa: E402
from pipelines.run_local import DEMO_SETTINGS, run_local  # noqa: E402
from pipelines.sample_data import generate  # noqa: E402

RUNNERS = ("subprocess", "docker")


def stage_seconds(run_dir: str, start: float) -> dict[str, float]:
    """Each task's seconds: from the previous task's executor output (or the run's start)
    to its own."""
    written = sorted(
        (os.path.getmtime(path), os.path.basename(os.path.dirname(path)))
        for path in glob.glob(os.path.join(run_dir, "*", "executor_output.json"))
    )
    seconds, previous = {}, start
    for mtime, task in written:
        seconds[task] = mtime - previous
        previous = mtime
    return seconds


def run_once(runner: str, image_dir: str, work: str) -> tuple[float, dict[str, float], float]:
    start = time.time()
    summary = run_local(work, image_dir=image_dir, runner=runner, **DEMO_SETTINGS)
    total = time.time() - start
    return total, stage_seconds(summary["run_dir"], start), summary["test_metrics"]["accuracy"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-class", type=int, default=100, help="generated images per class")
    p.add_argument("--repeat", type=int, default=1, help="runs per runner, alternating")
    args = p.parse_args(argv)

    print(f"machine: {cpu_model()}, {usable_cpus()} usable CPUs, load {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        data = generate(os.path.join(tmp, "sample"), per_class=args.per_class)
        best: dict[str, tuple[float, dict[str, float], float]] = {}
        for repeat in range(args.repeat):
            for runner in RUNNERS:
                result = run_once(runner, data.image_dir, os.path.join(tmp, f"{runner}-{repeat}"))
                print(f"{runner}: {result[0]:.1f} s, test accuracy {result[2]:.3f}")
                if runner not in best or result[0] < best[runner][0]:
                    best[runner] = result

    tasks = list(best["subprocess"][1])
    print(f"\n{data.count} images, demo settings, best of {args.repeat}")
    print(f"{'stage':<18}{'subprocess s':>14}{'docker s':>10}{'ratio':>8}")
    for task in tasks:
        base, ours = best["subprocess"][1][task], best["docker"][1].get(task, float("nan"))
        print(f"{task:<18}{base:>14.1f}{ours:>10.1f}{ours / base:>8.2f}")
    base, ours = best["subprocess"][0], best["docker"][0]
    print(f"{'whole run':<18}{base:>14.1f}{ours:>10.1f}{ours / base:>8.2f}")


if __name__ == "__main__":
    main()
