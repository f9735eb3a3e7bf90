"""Rebuild pipeline/sample/sample.parquet, the bundled sample, from the photographs that
scikit-image and matplotlib ship in their wheels (licenses in pipeline/sample/SOURCES.md).

    pip download --no-deps scikit-image matplotlib -d /tmp/wheels
    cd /tmp/wheels && for w in *.whl; do
        unzip -oq "$w" 'skimage/data/*' 'matplotlib/mpl-data/sample_data/*'; done
    python scripts/build_sample.py /tmp/wheels

Each photo is stored once as a plain JPEG and some again in another form
(grayscale, CMYK, RGBA, palette, WebP, mirrored), so the default run also
exercises the mode conversions. Labels are looked up by class name in
torchvision's weight metadata, never typed as numbers, and stored as a ClassLabel
with those 1000 names, as a hub dataset stores them (so the label space is known).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import datasets
from PIL import Image, ImageOps
from torchvision.models import AlexNet_Weights

PHOTOS = {  # file in the unpacked wheels -> ImageNet class name
    "skimage/data/chelsea.png": "tabby",
    "skimage/data/coffee.png": "espresso",
    "skimage/data/rocket.jpg": "missile",
    "matplotlib/mpl-data/sample_data/grace_hopper.jpg": "military uniform",
    "skimage/data/camera.png": "tripod",
}
VARIANTS = [  # (id, source, how it is stored)
    ("chelsea.jpg", "skimage/data/chelsea.png", "jpeg"),
    ("coffee.jpg", "skimage/data/coffee.png", "jpeg"),
    ("rocket.jpg", "skimage/data/rocket.jpg", "jpeg"),
    ("grace_hopper.jpg", "matplotlib/mpl-data/sample_data/grace_hopper.jpg", "jpeg"),
    ("camera.png", "skimage/data/camera.png", "png-gray"),
    ("chelsea_rgba.png", "skimage/data/chelsea.png", "png-rgba"),
    ("coffee_cmyk.jpg", "skimage/data/coffee.png", "jpeg-cmyk"),
    ("rocket_palette.gif", "skimage/data/rocket.jpg", "gif"),
    ("grace_hopper_gray.jpg", "matplotlib/mpl-data/sample_data/grace_hopper.jpg", "jpeg-gray"),
    ("chelsea_mirrored.webp", "skimage/data/chelsea.png", "webp-mirrored"),
]


def encode(image: Image.Image, form: str) -> bytes:
    out = io.BytesIO()
    rgb = image.convert("RGB")
    if form == "jpeg":
        rgb.save(out, "JPEG", quality=85)
    elif form == "png-gray":
        image.convert("L").save(out, "PNG")
    elif form == "png-rgba":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(200)
        rgba.save(out, "PNG")
    elif form == "jpeg-cmyk":
        rgb.convert("CMYK").save(out, "JPEG", quality=85)
    elif form == "gif":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(out, "GIF")
    elif form == "jpeg-gray":
        rgb.convert("L").save(out, "JPEG", quality=85)
    elif form == "webp-mirrored":
        ImageOps.mirror(rgb).save(out, "WEBP", quality=85)
    return out.getvalue()


def main(root: Path) -> None:
    categories = AlexNet_Weights.IMAGENET1K_V1.meta["categories"]
    rows: dict[str, list] = {"image": [], "label": [], "id": []}
    for name, source, form in VARIANTS:
        rows["image"].append({"bytes": encode(Image.open(root / source), form), "path": name})
        rows["label"].append(categories.index(PHOTOS[source]))
        rows["id"].append(name)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=categories),
            "id": datasets.Value("string"),
        }
    )
    out = Path(__file__).resolve().parent.parent / "pipeline" / "sample" / "sample.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(out)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB, {len(VARIANTS)} images)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
