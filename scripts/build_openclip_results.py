"""pipeline/published/openclip-results.csv from open_clip's own results table.

    python scripts/build_openclip_results.py OPEN_CLIP_CHECKOUT/docs/openclip_results.csv

Keeps the model name, the pretrained tag and the zero-shot ImageNet-1k top-1 (a fraction
there, in percent here) of each row, in the table's order; nothing is typed by hand.
open_clip is MIT-licensed; SOURCES.md says from which commit.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "pipeline" / "published" / "openclip-results.csv"


def main(source: str) -> None:
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(OUT, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["name", "pretrained", "imagenet1k_top1"])
        for row in rows:
            if row["ImageNet 1k"]:
                top1 = round(100 * float(row["ImageNet 1k"]), 2)
                writer.writerow([row["name"], row["pretrained"], f"{top1:.2f}"])
    print(f"wrote {OUT} ({len(rows)} rows)")


if __name__ == "__main__":
    main(sys.argv[1])
