"""Statistics over per-image outcomes: intervals of accuracies, paired tests, calibration.

Plain Python and NumPy (no torch), so that the commands over finished runs start fast.
"""

from __future__ import annotations

import math
from typing import Any

ECE_BINS = 15  # equal-width bins of top-1 probability for the calibration error
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion, as fractions (nan, nan when n is 0)."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def percent_interval(percent: float | None, n: int) -> list[float | None]:
    """The Wilson interval, in percent, of an accuracy given in percent over n images (the
    count of successes is recovered from the metrics row; None, None when n is 0)."""
    if n == 0 or percent is None or math.isnan(percent):  # no images: no accuracy at all
        return [None, None]
    low, high = wilson(round(percent * n / 100), n)
    return [100 * low, 100 * high]


def mcnemar_exact(first_only: int, second_only: int) -> float:
    """McNemar's exact test: two-sided binomial p-value of the discordant counts (b, c)."""
    n, k = first_only + second_only, min(first_only, second_only)
    if n == 0:
        return 1.0
    # P(X <= k) for X ~ Binomial(n, 1/2), summed in log space: the exact integers
    # (math.comb) take minutes at ImageNet's counts
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)]
    top = max(logs)
    log_tail = top + math.log(sum(math.exp(v - top) for v in logs)) - n * math.log(2)
    return min(1.0, 2 * math.exp(log_tail))


def paired_difference(
    both: int, first_only: int, second_only: int, neither: int
) -> tuple[float, float, float] | tuple[None, None, None]:
    """(difference of the second proportion minus the first, and its 95% interval) for
    paired outcomes: Newcombe's hybrid score interval (method 10, Statist. Med. 1998);
    None where there are no pairs."""
    n = both + first_only + second_only + neither
    if n == 0:
        return None, None, None
    p1, p2 = (both + first_only) / n, (both + second_only) / n
    l1, u1 = wilson(both + first_only, n)
    l2, u2 = wilson(both + second_only, n)
    rows = (
        (both + first_only)
        * (second_only + neither)
        * (both + second_only)
        * (first_only + neither)
    )
    phi = (both * neither - first_only * second_only) / math.sqrt(rows) if rows else 0.0
    d = p2 - p1
    lower = math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    upper = math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))
    return d, max(-1.0, d - lower), min(1.0, d + upper)


def calibration(
    confidence: Any, correct: Any, bins: int = ECE_BINS
) -> tuple[float | None, list[dict[str, Any]]]:
    """Expected calibration error over `bins` equal-width bins of top-1 probability, and
    each bin's count, mean confidence and accuracy (the reliability diagram's points);
    None where there is nothing to measure (no labeled image, an empty bin)."""
    import numpy as np

    confidence, correct = np.asarray(confidence, float), np.asarray(correct, bool)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # (k/M, (k+1)/M]
    counts = np.bincount(which, minlength=bins)
    conf = np.bincount(which, confidence, minlength=bins)
    hits = np.bincount(which, correct, minlength=bins)
    rows, ece, n = [], 0.0, max(len(confidence), 1)
    for k in range(bins):
        if counts[k]:
            mean_conf, acc = conf[k] / counts[k], hits[k] / counts[k]
            ece += counts[k] / n * abs(acc - mean_conf)
        else:
            mean_conf = acc = None
        rows.append(
            {
                "lower": k / bins,
                "upper": (k + 1) / bins,
                "count": int(counts[k]),
                "confidence": None if mean_conf is None else float(mean_conf),
                "accuracy": None if acc is None else float(acc),
            }
        )
    return (float(ece) if len(confidence) else None), rows


def number(x: Any, digits: int = 3, kind: str = "f") -> str:
    """A statistic as text; n/a where it is undefined (no labeled image: None, or NaN as
    pandas reads a null back)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}{kind}}"


def signed(x: Any, digits: int = 3) -> str:
    """A difference as text, with its sign; n/a where it is undefined."""
    return number(x, digits, "f") if number(x) == "n/a" else f"{x:+.{digits}f}"
