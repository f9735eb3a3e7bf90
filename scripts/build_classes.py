"""Rebuild the class lists in pipeline/classes/ from the pinned timm wheel (see its
SOURCES.md).

    pip download --no-deps timm==1.0.31 -d /tmp/timm
    python scripts/build_classes.py /tmp/timm/timm-1.0.31-py3-none-any.whl

The order of imagenet-1k.tsv is checked against torchvision's own class order
(sorted WordNet ids) through its category names, so a wrong source cannot slip in.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

from torchvision.models import AlexNet_Weights

INFO = "timm/data/_info/"
HERE = Path(__file__).resolve().parent.parent / "pipeline" / "classes"


def main(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:

        def read(name: str) -> list[str]:
            return z.read(INFO + name).decode().splitlines()

        wnids = read("imagenet_synsets.txt")
        lemmas = dict(line.split("\t", 1) for line in read("imagenet_synset_to_lemma.txt"))
        subsets = {
            "imagenet-r": read("imagenet_r_synsets.txt"),
            "imagenet-a": read("imagenet_a_synsets.txt"),
        }
    assert len(wnids) == 1000 and wnids == sorted(wnids), "ImageNet-1k order is the sorted wnids"
    categories = AlexNet_Weights.IMAGENET1K_V1.meta["categories"]
    for i, (short, wnid) in enumerate(zip(categories, wnids, strict=True)):  # same class order
        assert short.split()[0].lower() in lemmas[wnid].lower(), (i, short, lemmas[wnid])
    (HERE / "imagenet-1k.tsv").write_text("".join(f"{w}\t{lemmas[w]}\n" for w in wnids))
    for name, ids in subsets.items():
        assert len(ids) == 200 and ids == sorted(ids) and set(ids) <= set(wnids), name
        (HERE / f"{name}.txt").write_text("".join(f"{w}\n" for w in ids))
    print(f"wrote imagenet-1k.tsv and {', '.join(subsets)} into {HERE}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
