"""ImageNet-C's release (Hendrycks & Dietterich, ICLR 2019): its corruptions, severities
and folder layout (<path>/<corruption>/<severity>/<wnid>/*.JPEG), named cells checked in
one line. Plain values in and out; the CE/mCE arithmetic is reports/mce.py's.
"""

from __future__ import annotations

import difflib
import os

from pipeline.errors import UserError
from pipeline.request import CLEAN

GROUPS = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
BENCHMARK = tuple(c for group in GROUPS.values() for c in group)  # the 15 of the mCE
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")  # held out by the authors
ALL = BENCHMARK + EXTRA
SEVERITIES = (1, 2, 3, 4, 5)


def cell(corruption: str, severity: int | None) -> tuple[str, int | None]:
    """dataset.corruption (`name`, `name/severity` or `clean`) and dataset.severity ->
    (corruption, severity; None for clean), or one line naming what is valid."""
    if corruption == CLEAN:
        return CLEAN, None
    name, _, given = corruption.partition("/")
    if given:
        if not given.isdigit():
            raise UserError(f"dataset.corruption={corruption}: write it as name/severity (1..5)")
        if severity is not None and severity != int(given):
            raise UserError(
                f"dataset.corruption={corruption} and dataset.severity={severity} disagree"
            )
        severity = int(given)
    return check_name(name, "dataset.corruption"), check_severity(severity, "dataset.severity")


def check_name(name: str, key: str) -> str:
    if name in ALL:
        return name
    close = difflib.get_close_matches(name, ALL, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UserError(
        f"{key}={name} is not an ImageNet-C corruption.{hint} Valid: {', '.join(ALL)}, or {CLEAN}"
    )


def check_severity(severity: int | None, key: str, given: str | None = None) -> int:
    """`given`: the whole value the severity came from (fog:6), to name in the error."""
    if severity is None or severity not in SEVERITIES:
        raise UserError(f"{key}={given or severity}; ImageNet-C's severities are 1..5")
    return severity


def on_the_fly(spec: str) -> tuple[str, int] | None:
    """dataset.corrupt: `name:severity` -> (name, severity); `none` -> None (clean)."""
    if spec == "none":
        return None
    name, _, severity = spec.partition(":")
    if not severity.isdigit():
        raise UserError(f"dataset.corrupt={spec}: write it as name:severity, e.g. fog:3, or none")
    key = "dataset.corrupt"
    return check_name(name, key), check_severity(int(severity), key, given=spec)


def check_cell(release: str, name: str, severity: int | None) -> None:
    """A local release must hold the cell's folder: one line naming what it holds instead
    (`datasets` would say only that it "doesn't contain any data files")."""
    if not os.path.isdir(release) or os.path.isdir(os.path.join(release, name, str(severity))):
        return
    if os.path.isdir(os.path.join(release, name)):
        have = sorted(e for e in os.listdir(os.path.join(release, name)) if e.isdigit())
        held = f"its {name}/ holds severities {', '.join(have) or 'none'}"
    else:
        have = sorted(e for e in os.listdir(release) if e in ALL)
        held = f"its corruptions: {', '.join(have) or 'none'}"
    raise UserError(
        f"The ImageNet-C release at {release} has no {name}/{severity} ({held}); "
        f"extract that cell, or choose one it has"
    )
