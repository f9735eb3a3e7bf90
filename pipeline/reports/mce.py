"""ImageNet-C's corruption errors (Hendrycks & Dietterich, ICLR 2019): AlexNet's published
errors, and the corruption errors of a sweep's runs.

    CE_c          = sum_s E_{s,c} / sum_s E^AlexNet_{s,c}
    mCE           = the mean of CE_c over the 15 benchmark corruptions
    relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^AlexNet_{s,c} - E^AlexNet_clean)

Each normalised twice: by the published AlexNet table (pipeline/published/), and by an
AlexNet measured in the same sweep, when it holds one. A CE needs all 5 severities and
an mCE all 15 corruptions: with a cell missing they are None, and the missing cells are
named (a mean over fewer would not be ImageNet-C's). No torch here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from pipeline.data.imagenet_c import ALL, BENCHMARK, EXTRA, SEVERITIES
from pipeline.errors import UserError
from pipeline.request import CLEAN

Cell = tuple[str, int]  # (corruption, severity)


# --------------------------------------------------------------- published


@dataclass(frozen=True)
class Reference:
    """A model's errors to normalise by: per corruption, the 5 severities' errors, and the
    clean error (fractions)."""

    name: str  # "published AlexNet", or the measured run it comes from
    errors: Mapping[str, tuple[float | None, ...]]
    clean: float | None


@cache
def published() -> Reference:
    """AlexNet's errors as published (pipeline/published/SOURCES.md)."""
    text = files("pipeline").joinpath("published/imagenet-c-alexnet.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines()[1:]]
    errors = {r[0]: tuple(float(e) for e in r[1:6]) for r in rows if r[0] != CLEAN}
    (clean,) = [float(r[6]) for r in rows if r[0] == CLEAN]
    return Reference("published AlexNet (Hendrycks & Dietterich 2019)", errors, clean)


# --------------------------------------------------------------- the errors


@dataclass(frozen=True)
class ModelErrors:
    """One model's measured errors over a sweep: (corruption, severity) -> error, and its
    clean error, with the run folder of each."""

    model: str
    cells: Mapping[Cell, float]
    clean: float | None
    source: str  # how the corrupted images were made: the release, or on the fly
    runs: Mapping[str, str]  # "corruption/severity" or clean -> run folder

    def as_reference(self) -> Reference:
        errors = {c: tuple(self.cells.get((c, s)) for s in SEVERITIES) for c in ALL}
        return Reference(f"measured {self.model}", errors, self.clean)


def missing(m: ModelErrors) -> list[str]:
    """The benchmark's cells (and the clean run) this model has no error for."""
    gaps = [f"{c}/{s}" for c in BENCHMARK for s in SEVERITIES if (c, s) not in m.cells]
    return gaps + ([CLEAN] if m.clean is None else [])


def corruption_errors(m: ModelErrors, ref: Reference) -> dict[str, Any]:
    """CE and relative CE per corruption, and their means over the 15, normalised by `ref`;
    None wherever a severity (or a clean error) is missing on either side."""
    ce: dict[str, float | None] = {}
    relative: dict[str, float | None] = {}
    for c in ALL:
        mine = _all_of([m.cells.get((c, s)) for s in SEVERITIES])
        theirs = _all_of(list(ref.errors.get(c, ())))
        ce[c] = relative[c] = None
        if mine is None or theirs is None:
            continue
        ce[c] = sum(mine) / sum(theirs)
        if m.clean is not None and ref.clean is not None:
            gap = sum(e - ref.clean for e in theirs)
            relative[c] = sum(e - m.clean for e in mine) / gap if gap else None
    return {
        "by": ref.name,
        "ce": ce,
        "mce": _mean([ce[c] for c in BENCHMARK]),
        "relative_ce": relative,
        "relative_mce": _mean([relative[c] for c in BENCHMARK]),
    }


def _all_of(values: list[float | None]) -> list[float] | None:
    """The 5 severities' errors, when none is missing."""
    known = [v for v in values if v is not None]
    return known if len(known) == len(SEVERITIES) else None


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if len(known) == len(values) else None


def versus_published(m: ModelErrors) -> dict[str, list[float | None]]:
    """For AlexNet itself: this run's error minus the published one, cell by cell."""
    ref = published()
    out: dict[str, list[float | None]] = {}
    for c in BENCHMARK:
        row: list[float | None] = []
        for s in SEVERITIES:
            ours, theirs = m.cells.get((c, s)), ref.errors[c][s - 1]
            row.append(None if ours is None or theirs is None else ours - theirs)
        out[c] = row
    return out


# --------------------------------------------------------------- a sweep's runs


def gather(runs: Iterable[tuple[str, Any, Any]]) -> list[ModelErrors]:
    """The ImageNet-C runs among finished runs (folder, plan, scores): one ModelErrors per
    model (arch, weights and their sha256, backend, amp) and way of making the corrupted
    images (the release, or on the fly: never averaged together); a model's clean run
    belongs to each of its groups. Two runs of one cell of one model are refused."""
    cells: dict[tuple[Any, ...], dict[Cell, float]] = {}
    folders: dict[tuple[Any, ...], dict[str, str]] = {}
    clean: dict[tuple[Any, ...], tuple[str, float | None]] = {}
    for folder, p, s in runs:
        px = p.pixels
        if px.corruption is None:
            continue
        model = (p.model.model, p.model.weights, p.model.weights_sha256, px.backend.value,
                 p.runtime.amp)  # fmt: skip
        error = None if s.top1 is None else 1 - s.top1 / 100
        if px.corruption == CLEAN:
            if model in clean:
                raise UserError(
                    f"{folder} and {clean[model][0]} are both the clean run of one model"
                )
            clean[model] = (folder, error)
            continue
        key = (model, px.corruption_source)
        name = f"{px.corruption}/{px.severity}"
        if name in folders.setdefault(key, {}):
            raise UserError(f"{folder} and {folders[key][name]} both score {name} with one model")
        folders[key][name] = folder
        if error is not None:
            cells.setdefault(key, {})[(px.corruption, px.severity)] = error
    return [
        ModelErrors(
            model=f"{key[0][0]} ({key[0][1]})",
            cells=cells.get(key, {}),
            clean=clean.get(key[0], ("", None))[1],
            source=key[1],
            runs=runs_of | ({CLEAN: clean[key[0]][0]} if key[0] in clean else {}),
        )
        for key, runs_of in folders.items()
    ]


def is_alexnet(g: ModelErrors) -> bool:
    return g.model.startswith("alexnet ")


def measured_alexnet(groups: list[ModelErrors], source: str) -> ModelErrors | None:
    """The sweep's own AlexNet made the same way, to normalise by: torchvision's weights if
    it has them, else its only AlexNet; None when it has none (or several, unnamed)."""
    alexnets = [g for g in groups if is_alexnet(g) and g.source == source]
    published_weights = [g for g in alexnets if g.model == "alexnet (IMAGENET1K_V1)"]
    chosen = published_weights or alexnets
    return chosen[0] if len(chosen) == 1 else None


def summary(groups: list[ModelErrors]) -> list[dict[str, Any]]:
    """Every group's errors, CE, mCE and relative mCE, normalised by the published AlexNet
    and by the sweep's measured AlexNet, the cells it lacks, and (for AlexNet) the
    difference to the published errors, cell by cell: report.json's `imagenet_c`."""
    out = []
    for g in groups:
        reference = measured_alexnet(groups, g.source)
        gaps = missing(g)
        out.append(
            {
                "model": g.model,
                "source": g.source,
                "errors": {c: [g.cells.get((c, s)) for s in SEVERITIES] for c in ALL},
                "clean": g.clean,
                "missing": gaps,
                "partial": bool(gaps),
                "published": corruption_errors(g, published()),
                "measured": None
                if reference is None
                else corruption_errors(g, reference.as_reference())
                | {"runs": dict(reference.runs)},
                "versus_published": versus_published(g) if is_alexnet(g) else None,
                "published_errors": {c: list(published().errors[c]) for c in BENCHMARK}
                if is_alexnet(g)
                else None,
                "runs": dict(g.runs),
            }
        )
    return out


def is_summary_file(path: Any) -> bool:
    """Whether an imagenet_c.json is this pipeline's: a list of summary() entries."""
    import json

    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    keys = {"model", "source", "errors", "published", "missing"}
    return isinstance(entries, list) and all(
        isinstance(e, dict) and keys <= e.keys() for e in entries
    )


def lines(entry: dict[str, Any]) -> list[str]:
    """One group's table as text: errors per cell (%), CE and relative CE (%), the means."""
    pub, mes = entry["published"], entry["measured"]
    head = f"{'corruption':18} " + " ".join(f"{'s' + str(s):>6}" for s in SEVERITIES)
    head += f" {'CE':>7} {'relCE':>7}" + (f" {'CE*':>7}" if mes else "")
    out = [f"ImageNet-C, {entry['model']}, {entry['source']}:", head]
    for c in ALL:
        errors = entry["errors"][c]
        if c in EXTRA and all(e is None for e in errors):
            continue
        row = f"{c:18} " + " ".join(_pct(e, 6) for e in errors)
        row += f" {_pct(pub['ce'][c], 7)} {_pct(pub['relative_ce'][c], 7)}"
        out.append(row + (f" {_pct(mes['ce'][c], 7)}" if mes else ""))
    out.append(
        f"clean error {_pct(entry['clean'], 0).strip()}   mCE {_pct(pub['mce'], 0).strip()}   "
        f"relative mCE {_pct(pub['relative_mce'], 0).strip()}   (by the {pub['by']})"
    )
    if mes:
        out.append(
            f"by the {mes['by']}: mCE {_pct(mes['mce'], 0).strip()}   relative mCE "
            f"{_pct(mes['relative_mce'], 0).strip()}   (column CE*)"
        )
    if entry["versus_published"]:
        out += versus_lines(entry)
    if entry["partial"]:
        shown = ", ".join(entry["missing"][:8]) + (
            f" and {len(entry['missing']) - 8} more" if len(entry["missing"]) > 8 else ""
        )
        out.append(f"partial: no result for {shown}; the means need every cell")
    return out


def versus_lines(entry: dict[str, Any]) -> list[str]:
    """AlexNet's check against the paper: each cell's published error and this run's
    difference to it (points)."""
    head = f"{'corruption':18} " + " ".join(f"{'s' + str(s):>13}" for s in SEVERITIES)
    out = ["AlexNet against the paper: the published error, ours - published (points)", head]
    for c, deltas in entry["versus_published"].items():
        cells = [
            f"{100 * p:6.1f} {'n/a' if d is None else f'{100 * d:+.1f}':>6}"
            for p, d in zip(entry["published_errors"][c], deltas, strict=True)
        ]
        out.append(f"{c:18} " + " ".join(cells))
    return out


def _pct(value: float | None, width: int) -> str:
    return f"{'n/a' if value is None else f'{100 * value:.1f}':>{width}}"
