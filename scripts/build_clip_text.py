"""pipeline/classes/clip-imagenet-names.txt and clip-imagenet-templates.txt from the
installed open_clip (its zero_shot_metadata: IMAGENET_CLASSNAMES, OpenAI's curated names of
the 1000 classes, and OPENAI_IMAGENET_TEMPLATES, OpenAI's 80), so that a zero-shot run of a
transformers CLIP needs no open_clip. Nothing is typed by hand.

    pip install open_clip_torch==3.3.0 && python scripts/build_clip_text.py
"""

from __future__ import annotations

from pathlib import Path

import open_clip

OUT = Path(__file__).resolve().parent.parent / "pipeline" / "classes"


def main() -> None:
    names = list(open_clip.IMAGENET_CLASSNAMES)
    templates = [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    assert len(names) == 1000 and len(templates) == 80
    assert all("\n" not in n and n.strip() == n and n for n in names)
    assert all(t.count("{}") == 1 for t in templates)
    (OUT / "clip-imagenet-names.txt").write_text("".join(f"{n}\n" for n in names))
    (OUT / "clip-imagenet-templates.txt").write_text("".join(f"{t}\n" for t in templates))
    print(f"wrote {len(names)} names, {len(templates)} templates ({open_clip.__version__})")


if __name__ == "__main__":
    main()
