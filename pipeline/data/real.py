"""ImageNet-ReaL (Beyer et al. 2020): the reassessed labels of ImageNet-1k val, checked
against the rows before scoring and applied to each row's top-1."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.data.imagenet import N_CLASSES, imagenet_classes
from pipeline.errors import UserError

REAL_ENTRIES = 50_000  # one per ImageNet-1k val image, in val-number order
# ILSVRC2012_val_00000001.JPEG, the hub's ILSVRC2012_val_00000001_n01751748.JPEG (the
# loading script of ILSVRC/imagenet-1k appends the wnid) and webdataset keys without an
# extension (timm/imagenet-1k-wds: ILSVRC2012_val_00000001)
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})(?:_(n\d{8}))?(?:\.\w+)?", re.IGNORECASE)


@dataclass(frozen=True)
class RealLabels:
    """ImageNet-ReaL (Beyer et al. 2020): for each val image, the set of labels reassessed as
    correct; a top-1 counts when it is in the set, and images with an empty set are left out.
    Entry k of real.json is the val image numbered k+1 (ILSVRC2012_val_<k+1>)."""

    path: str
    sha256: str
    sets: tuple[frozenset[int], ...]

    @classmethod
    def load(cls, path: str) -> RealLabels:
        """real.json: exactly 50,000 lists of class ids 0..999, or one line saying what is off
        (a list one entry short shifts every image after it onto another's labels)."""
        try:
            with open(path, "rb") as f:
                raw = f.read()
            entries = json.loads(raw)
        except OSError as e:
            raise UserError(
                f"metrics.real_labels={path}: cannot read it ({e.strerror or e})"
            ) from None
        except ValueError as e:
            raise UserError(f"metrics.real_labels={path} is not valid JSON: {e}") from None
        what = (
            f"metrics.real_labels={path} is not a ReaL file (google-research/reassessed-imagenet "
            f"real.json: per val image, a list of class ids 0..999)"
        )
        if not isinstance(entries, list):
            raise UserError(f"{what}: it holds a JSON {type(entries).__name__}")
        if len(entries) != REAL_ENTRIES:
            raise UserError(f"{what}: it has {len(entries)} entries, not {REAL_ENTRIES:,}")
        for k, labels in enumerate(entries):
            if not isinstance(labels, list) or not all(_class_index(i) for i in labels):
                raise UserError(f"{what}: entry {k} is {json.dumps(labels)[:60]}")
        digest = hashlib.sha256(raw).hexdigest()
        return cls(path, digest, tuple(frozenset(s) for s in entries))

    @staticmethod
    def entry(image_id: str | None) -> tuple[int, str | None] | None:
        """(real.json entry, the wnid the name carries if any) of a val image, from its file
        name or key; None when the name is not a val image's."""
        match = VAL_NAME.fullmatch(os.path.basename(image_id or ""))
        if not match or not 1 <= int(match[1]) <= REAL_ENTRIES:
            return None
        return int(match[1]) - 1, match[2]

    def check(
        self, ids: Sequence[str | None], rows: Sequence[int], labels: Sequence[int | None]
    ) -> None:
        """Before any row is scored: every row must name its val image, and a name that
        carries a wnid must agree with the row's label."""
        wnids = imagenet_classes()[0]
        for row, image_id, label in zip(rows, ids, labels, strict=True):
            found = self.entry(image_id)
            if found is None:
                raise UserError(
                    f"metrics.real_labels: row {row} is {image_id!r}, not an ImageNet val file "
                    f"name (ILSVRC2012_val_00000001.JPEG .. {REAL_ENTRIES:08d}, or with its "
                    f"wnid: ILSVRC2012_val_00000001_n01751748.JPEG); ReaL labels fit only "
                    f"ImageNet-1k val"
                )
            wnid = found[1]
            if wnid and label is not None and wnids[label].lower() != wnid.lower():
                raise UserError(
                    f"metrics.real_labels: row {row} is {image_id!r}, named for class {wnid}, "
                    f"but its label is {label} ({wnids[label]}): the rows and their names "
                    f"disagree, so ReaL's entries cannot be trusted to match them"
                )

    def correct(self, ids: Sequence[str | None], preds: Sequence[int | None]) -> list[bool | None]:
        """Per row: top-1 in the ReaL set; None for unscored rows and empty sets."""
        out: list[bool | None] = []
        for image_id, pred in zip(ids, preds, strict=True):
            found = self.entry(image_id)
            labels = self.sets[found[0]] if found is not None else frozenset()
            out.append(None if pred is None or not labels else pred in labels)
        return out


def _class_index(value: Any) -> bool:
    """A class id 0..999 as JSON has it (true and false are not ids)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < N_CLASSES
