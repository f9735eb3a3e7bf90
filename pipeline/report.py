"""report.html + report.json for finished runs.

    python -m pipeline.report RUN [RUN ...] [--thumbnails N] [--val TITLE] [--scale S]

Written into the first RUN folder (reports/numbers.py makes the numbers, reports/html.py
the page): one self-contained page, and every number it shows under stable keys. Runs
over the same rows as the first get a paired comparison with it; runs over other data a
side-by-side row. Models run on val and on shifted datasets get the effective-robustness
plot. A run of an export (python -m pipeline.export) beside its source's run is compared
with it image by image: top-1 flips, top-5 set changes, the largest probability change,
the flipped images.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from pipeline.errors import one_line
from pipeline.reports import exports, mce, robustness, stats
from pipeline.reports.numbers import targets, write


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "runs",
        type=Path,
        nargs="+",
        help="finished run folders and sweep folders (a sweep: its finished jobs); the report "
        "goes into the first folder given",
    )
    parser.add_argument(
        "--thumbnails", type=int, default=24, help="most confident mistakes to show (0: none)"
    )
    parser.add_argument(
        "--val",
        default=robustness.VAL,
        help="effective robustness: the dataset.title of the val runs, the x axis "
        f"(default {robustness.VAL})",
    )
    parser.add_argument(
        "--scale",
        choices=sorted(robustness.SCALES),
        default="logit",
        help="effective robustness: the axes' scale (default logit)",
    )
    args = parser.parse_args(argv)
    with one_line(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the page says what matters; a library's noise not
        dirs, out = targets(args.runs)
        report = write(dirs, args.thumbnails, out, args.val, args.scale)
    first, num = report["runs"][0], stats.number
    lo, hi = first["top1_ci95"]
    print(f"top-1 {num(first['top1'])} [{num(lo)}, {num(hi)}]  ECE {num(first['ece'], 4)}")
    for p in report["paired"]:
        print(
            f"vs {p['run']}: agreement {num(p['agreement'], 4)}, top-1 "
            f"{stats.signed(p['top1_diff'])} points, McNemar p={num(p['mcnemar_p'], 3, 'g')}"
        )
    for entry in report["exports"]:
        print(exports.line(entry))
    for entry in report["imagenet_c"]:
        print("\n".join(mce.lines(entry)))
    for line in robustness.lines(report["effective_robustness"]):
        print(line)
    print(f"wrote {out / 'report.html'} and {out / 'report.json'}")


if __name__ == "__main__":
    main()
