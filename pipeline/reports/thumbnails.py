"""The report's thumbnails: a run's most confident mistakes, read back from its dataset by
row index, once the dataset is shown to be the one that was scored."""

from __future__ import annotations

import base64
import io
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import UserError, first_line

if TYPE_CHECKING:
    from pipeline.reports.finished import Run


def most_confident_mistakes(run: Run, count: int) -> tuple[list[dict[str, Any]], str]:
    """The most confident mistakes, read back from the dataset by row index, once the
    dataset is shown to be the one that was scored (or why they are left out)."""
    wrong = np.flatnonzero(run.labeled & ~run.top1)
    picks = wrong[np.argsort(-run.confidence[wrong], kind="stable")][:count]
    if count == 0 or not len(picks):
        return [], "no mistakes to show" if count else "thumbnails not asked for"
    pictures, why_not = of_rows(run, picks)
    if why_not:
        return [], why_not
    shown = []
    for k, picture in zip(picks, pictures, strict=True):
        if picture is None:
            continue
        shown.append(
            {
                "index": int(run.index[k]),
                "id": run.ids[k],
                "confidence": float(run.confidence[k]),
                "label": run.names[run.label[k]],
                "pred": run.names[run.pred[k]],
                "jpeg": picture,
            }
        )
    return shown, f"the {len(shown)} most confident top-1 mistakes"


def of_rows(run: Run, picks: np.ndarray) -> tuple[list[str | None], str | None]:
    """The thumbnails of a run's rows `picks` (None: one that does not decode), or why
    there are none: read back from its dataset, once it is shown to be the one scored."""
    try:
        split, images = dataset_images(run, picks)
    except UserError as e:
        return [], f"thumbnails left out: {e}"
    except Exception as e:  # moved, offline, deleted: the page says so and goes on
        return [], f"the dataset could not be read for thumbnails ({first_line(e)[:200]})"
    return [thumbnail(image, split.roots) for image in images], None


def dataset_images(run: Run, picks: np.ndarray) -> tuple[Any, list[Any]]:
    """The split a run scored and the encoded images of rows `picks`; a UserError when the
    data has changed since (another fingerprint or length, or a row whose id is not the
    one the run recorded): a new image would show under an old image's row."""
    from pipeline.data import source as splits

    p = run.plan.data
    if p.dataset_fingerprint is None:
        raise UserError("the run streamed its split: there is no fingerprint to check it by")
    source = replace(p.source, streaming=False, label_column=None)
    split = splits.load_split(source)
    if (split.fingerprint, split.num_rows) != (p.dataset_fingerprint, p.dataset_rows):
        raise UserError("the dataset has changed since the run (its fingerprint differs)")
    rows = run.index[picks]
    now = splits.row_ids(split, rows, source.id_column)
    for row, k, id_now in zip(rows, picks, now, strict=True):
        if run.ids[k] != id_now:
            raise UserError(
                f"row {row} of the dataset is {id_now!r} now, {run.ids[k]!r} in the run"
            )
    column = split.table.select_columns([split.image_column])
    return split, column[[int(r) for r in rows]][split.image_column]


def thumbnail(image: Any, roots: Any) -> str | None:
    """A 160-pixel JPEG of an encoded image, base64; None when it does not decode."""
    from pipeline.data.images import open_image, read_bytes, to_rgb

    try:
        picture = to_rgb(open_image(read_bytes(image, roots)))
    except Exception:  # any decoder failure: that thumbnail is left out
        return None
    picture.thumbnail((160, 160))
    buf = io.BytesIO()
    picture.save(buf, "JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode()
