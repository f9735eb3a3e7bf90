"""Rebuild pipeline/published/imagenet-c-alexnet.tsv: AlexNet's ImageNet-C errors, as
published, from the source files themselves (see pipeline/published/SOURCES.md).

    python scripts/build_imagenet_c.py AUGMIX_IMAGENET_PY ROBUSTCNN_IMAGENET_C_PY

AUGMIX_IMAGENET_PY: google-research/augmix imagenet.py (CORRUPTIONS and ALEXNET_ERR, the
15 averages over the 5 severities, "taken from hendrycks/robustness").
ROBUSTCNN_IMAGENET_C_PY: UCSC-VLAA/RobustCNN timm/utils/imagenet_c.py (the per-severity
errors). The script refuses to write unless every per-severity row averages to the
averages of the first file (to 6 decimals) and both name the same corruptions in the
same order. The clean error is 1 - torchvision's published acc@1 of the same weights
(AlexNet_Weights.IMAGENET1K_V1; hendrycks/robustness ImageNet-C/test.py scores the clean
val split with torchvision's AlexNet).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

from torchvision.models import AlexNet_Weights

OUT = Path(__file__).resolve().parent.parent / "pipeline" / "published" / "imagenet-c-alexnet.tsv"


def assigned(path: str, name: str) -> Any:
    """The literal value a Python file assigns to `name` at its top level."""
    tree = ast.parse(Path(path).read_text())
    for node in tree.body:
        targets = getattr(node, "targets", [])
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in targets):
            return ast.literal_eval(node.value)
    raise SystemExit(f"{path} assigns no {name}")


def main(augmix: str, robustcnn: str) -> None:
    names, means = assigned(augmix, "CORRUPTIONS"), assigned(augmix, "ALEXNET_ERR")
    names_2 = assigned(robustcnn, "imagenetc_distortions")
    rows = assigned(robustcnn, "imagenetc_alexnet_error_rates_list")
    if list(names) != list(names_2) or len(rows) != len(names):
        raise SystemExit("the two sources name other corruptions")
    for name, mean, row in zip(names, means, rows, strict=True):
        if len(row) != 5 or round(sum(row) / 5, 6) != round(mean, 6):
            raise SystemExit(f"{name}: the severities {row} do not average to {mean}")
    clean = 1 - AlexNet_Weights.IMAGENET1K_V1.meta["_metrics"]["ImageNet-1K"]["acc@1"] / 100
    lines = ["corruption\tseverity_1\tseverity_2\tseverity_3\tseverity_4\tseverity_5\tmean"]
    for name, mean, row in zip(names, means, rows, strict=True):
        lines.append("\t".join([name, *(repr(float(e)) for e in row), repr(float(mean))]))
    lines.append("\t".join(["clean", "", "", "", "", "", repr(round(clean, 5))]))
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
