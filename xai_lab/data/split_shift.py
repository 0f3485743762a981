"""Split shift: whether the splits (and folds) differ in what their images look like, not only in labels.

Per split (and per fold's test set): original sizes, modes and file types and, on the decoded cache,
brightness, contrast, sharpness, saturated pixels and JPEG blockiness, one value per subject; every
pair of splits is compared with a two-sided Mann-Whitney U test and Cliff's delta (chi-squared and
total variation for the categories), and a shift is flagged when the Bonferroni-corrected p is below
``data.audit.split_shift_alpha`` and the effect is at least ``data.audit.split_shift_effect``.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xai_lab.config import AuditConfig

SPLIT_ORDER = ("train", "val", "test")
MIN_UNITS_FOR_SHIFT = 10  # a split (fold) with fewer images (subjects) is described, not compared

SHIFT_NUMBERS = {  # per image, on the decoded cache (gray = mean over channels)
    "brightness": "mean gray level",
    "contrast": "standard deviation of the gray levels",
    "sharpness": "variance of the 4-neighbour Laplacian",
    "saturated": "fraction of pixel values at 0 or 255",
    "blockiness": "mean step across 8x8 block edges / within blocks (JPEG blocking; 1: none)",
}
SHIFT_CATEGORIES = {"size": "original width x height", "mode": "original PIL mode", "format": "file type"}
OTHER_FOLDS = "other folds"


def _blockiness(gray: np.ndarray) -> np.ndarray:
    """Mean absolute step between neighbours across the 8x8 block edges over the mean step within blocks."""
    sums, counts = np.zeros((2, len(gray))), np.zeros(2)
    for axis in (1, 2):
        step = np.abs(np.diff(gray, axis=axis))
        at_edge = np.arange(step.shape[axis]) % 8 == 7
        for k, part in enumerate((at_edge, ~at_edge)):
            sums[k] += np.compress(part, step, axis=axis).sum(axis=(1, 2))
            counts[k] += part.sum() * step.shape[3 - axis]
    if not counts.all():
        return np.full(len(gray), np.nan)
    edge, inner = sums[0] / counts[0], sums[1] / counts[1]
    return np.where(inner > 0, edge / np.maximum(inner, 1e-12), 1.0)


def image_statistics(images: np.ndarray) -> pd.DataFrame:
    """The numbers of :data:`SHIFT_NUMBERS` for each image of a uint8 cache ``[N, C, H, W]``."""
    parts = []
    batch = max(1, 2**22 // max(1, int(np.prod(images.shape[1:]))))
    for start in range(0, len(images), batch):
        x = np.asarray(images[start : start + batch])
        gray = x.astype(np.float32).mean(axis=1)
        flat = gray.reshape(len(x), -1)
        lap = 4 * gray[:, 1:-1, 1:-1] - gray[:, :-2, 1:-1] - gray[:, 2:, 1:-1] - gray[:, 1:-1, :-2] - gray[:, 1:-1, 2:]
        parts.append(
            pd.DataFrame(
                {
                    "brightness": flat.mean(axis=1, dtype=np.float64),
                    "contrast": flat.std(axis=1, dtype=np.float64),
                    "sharpness": lap.reshape(len(x), -1).var(axis=1, dtype=np.float64),
                    "saturated": ((x == 0) | (x == 255)).reshape(len(x), -1).mean(axis=1),
                    "blockiness": _blockiness(gray),
                }
            )
        )
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(SHIFT_NUMBERS), dtype=float)


def image_categories(table: pd.DataFrame) -> pd.DataFrame:
    """Original size, mode and file type of each row (a CSV row's type is ``csv``)."""
    paths = table["path"].astype(str)
    return pd.DataFrame(
        {
            "size": (table["width"].astype(str) + "x" + table["height"].astype(str)).to_numpy(),
            "mode": table["mode"].astype(str).to_numpy() if "mode" in table else "?",
            "format": [Path(p.split("#")[0]).suffix.lower().lstrip(".") or "?" for p in paths],
        },
        index=range(len(table)),
    )


def split_units(values: pd.DataFrame, groups: np.ndarray, subjects: np.ndarray) -> pd.DataFrame:
    """One row per (group, subject): the median of each number and the most frequent size, mode and type.

    Frames of one subject are not independent samples; testing one value per subject keeps a
    split of 18 CK+ subjects from counting as 141 observations.
    """
    frame = values.assign(group=groups, subject=subjects)
    keys = ["group", "subject"]
    if not frame.duplicated(keys).any():
        return frame
    units = frame.groupby(keys, sort=False)[list(SHIFT_NUMBERS)].median()
    for c in SHIFT_CATEGORIES:
        top = frame.groupby([*keys, c], sort=False).size().rename("n").reset_index()
        units[c] = top.sort_values("n", ascending=False, kind="stable").drop_duplicates(keys).set_index(keys)[c]
    return units.reset_index()


def compare_numbers(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float]:
    """Two-sided Mann-Whitney U p-value (None: nothing to test) and Cliff's delta P(a > b) - P(a < b)."""
    from scipy.stats import mannwhitneyu

    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if not len(a) or not len(b) or np.ptp(np.concatenate([a, b])) == 0:
        return None, 0.0
    res = mannwhitneyu(a, b, alternative="two-sided")
    return float(res.pvalue), float(2 * res.statistic / (len(a) * len(b)) - 1)


def compare_categories(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float]:
    """Chi-squared p-value of the 2 x K table (None: one value on both sides) and the total variation distance."""
    from scipy.stats import chi2_contingency

    ca, cb = Counter(a.tolist()), Counter(b.tolist())
    keys = sorted(set(ca) | set(cb))
    if len(keys) < 2:
        return None, 0.0
    counts = np.array([[ca[k] for k in keys], [cb[k] for k in keys]], dtype=float)
    shares = counts / counts.sum(axis=1, keepdims=True)
    return float(chi2_contingency(counts).pvalue), float(0.5 * np.abs(shares[0] - shares[1]).sum())


def _describe(values: np.ndarray, stat: str) -> float | str | None:
    """What a comparison reports of one side: the median of a number, the most frequent category and its share."""
    if stat in SHIFT_NUMBERS:
        x = values[~np.isnan(values)]
        return float(f"{np.median(x):.4g}") if len(x) else None
    top, count = Counter(values.tolist()).most_common(1)[0]
    return f"{top} ({100 * count / len(values):.0f}%)"


def split_comparisons(plan: list[tuple[str, str, pd.DataFrame, pd.DataFrame]]) -> list[dict[str, Any]]:
    """Every statistic compared between the two sides ``(name, against, units_a, units_b)`` of each plan entry."""
    out = []
    for name, against, ua, ub in plan:
        for stat in (*SHIFT_NUMBERS, *SHIFT_CATEGORIES):
            numeric = stat in SHIFT_NUMBERS
            a, b = (u[stat].to_numpy(dtype=float if numeric else object) for u in (ua, ub))
            p, effect = (compare_numbers if numeric else compare_categories)(a, b)
            out.append(
                {
                    "statistic": stat,
                    "split": name,
                    "against": against,
                    "n": [len(a), len(b)],
                    "values": [_describe(a, stat), _describe(b, stat)],
                    "effect": round(effect, 3),
                    "p": None if p is None else float(f"{p:.3g}"),
                }
            )
    return out


def decide_shifts(comparisons: list[dict[str, Any]], cfg: AuditConfig) -> int:
    """Mark each comparison ``shift`` (Bonferroni p < alpha and |effect| >= the threshold); the number of tests."""
    m = sum(c["p"] is not None for c in comparisons)
    for c in comparisons:
        c["p_bonferroni"] = None if c["p"] is None else float(f"{min(1.0, c['p'] * m):.3g}")
        c["shift"] = bool(
            c["p"] is not None
            and c["p_bonferroni"] < cfg.split_shift_alpha
            and abs(c["effect"]) >= cfg.split_shift_effect
        )
    return m


def _oriented(c: dict[str, Any], name: str) -> dict[str, Any]:
    """Comparison ``c`` seen from split ``name`` (its effect's sign and its values turned when needed)."""
    if c["split"] == name:
        return c
    flip = -1 if c["statistic"] in SHIFT_NUMBERS else 1
    turned = {"split": name, "against": c["split"], "n": c["n"][::-1], "values": c["values"][::-1]}
    return {**c, **turned, "effect": flip * c["effect"]}


def shift_findings(comparisons: list[dict[str, Any]], compared: list[str]) -> list[dict[str, Any]]:
    """Shifted comparisons as findings; a split that differs from every other compared split is one finding."""
    findings = []
    for stat in (*SHIFT_NUMBERS, *SHIFT_CATEGORIES):
        shifted = [c for c in comparisons if c["statistic"] == stat and c["shift"]]
        pairs = [c for c in shifted if c["against"] != OTHER_FOLDS]
        odd = [
            s
            for s in compared
            if len(compared) > 2 and sum(s in (c["split"], c["against"]) for c in pairs) == len(compared) - 1
        ]
        groups = [[_oriented(c, s) for c in pairs if s in (c["split"], c["against"])] for s in odd]
        groups += [[c] for c in pairs if c["split"] not in odd and c["against"] not in odd]
        groups += [[c] for c in shifted if c["against"] == OTHER_FOLDS]
        for g in groups:
            findings.append(
                {
                    "statistic": stat,
                    "split": g[0]["split"],
                    "against": [c["against"] for c in g],
                    "values": [g[0]["values"][0]] + [c["values"][1] for c in g],
                    "effect": [c["effect"] for c in g],
                    "p_bonferroni": [c["p_bonferroni"] for c in g],
                }
            )
    return findings


def shift_warning(f: dict[str, Any]) -> str:
    """The warning line of one split-shift finding."""
    numeric = f["statistic"] in SHIFT_NUMBERS
    kind, effect, form = ("median", "Cliff's delta", "+.2f") if numeric else ("mostly", "total variation", ".2f")
    return (
        f"split shift: {f['statistic']} of {f['split']} differs from {' and '.join(f['against'])} "
        f"({kind} {f['values'][0]} vs {', '.join(map(str, f['values'][1:]))}; "
        f"{effect} {', '.join(format(e, form) for e in f['effect'])}; "
        f"Bonferroni p <= {max(f['p_bonferroni']):.2g})"
    )


def split_statistics(
    values: pd.DataFrame, groups: np.ndarray, subjects: np.ndarray, names: list[str]
) -> dict[str, Any]:
    """Per group: images, subjects, the size/mode/type mix and the median, mean and std of each number."""
    out = {}
    for name in names:
        m = np.asarray(groups == name)
        v = values[m]
        row: dict[str, Any] = {"images": int(m.sum()), "subjects": len(set(subjects[m]))}
        row.update({c: dict(Counter(v[c].tolist()).most_common()) for c in SHIFT_CATEGORIES})
        for c in SHIFT_NUMBERS:
            x = v[c].dropna().to_numpy()
            moments = (("median", np.median), ("mean", np.mean), ("std", np.std))
            row[c] = {k: float(f"{f(x):.4g}") for k, f in moments} if len(x) else {}
        out[name] = row
    return out


def _fold_plan(units: pd.DataFrame, names: list[str]) -> list[tuple[str, str, pd.DataFrame, pd.DataFrame]]:
    """Each fold's test set (the fold) against the other folds."""
    plan = []
    for name in names:
        m = (units["group"] == name).to_numpy()
        if m.sum() >= MIN_UNITS_FOR_SHIFT and (~m).sum() >= MIN_UNITS_FOR_SHIFT:
            plan.append((name, OTHER_FOLDS, units[m], units[~m]))
    return plan


def split_shift_sections(
    table: pd.DataFrame,
    images: np.ndarray,
    splits: np.ndarray,
    subjects: np.ndarray,
    cfg: AuditConfig,
    warnings: list[str],
) -> dict[str, Any]:
    """The report's ``split_stats`` and ``split_shift``; appends a ``split shift: ...`` warning per finding.

    Every pair of splits is compared, and with folds each fold's test set against the other folds.
    """
    values = pd.concat([image_statistics(images), image_categories(table)], axis=1)
    names = [s for s in SPLIT_ORDER if (splits == s).any()]
    units = split_units(values, splits, subjects)
    compared = [s for s in names if (units["group"] == s).sum() >= MIN_UNITS_FOR_SHIFT]
    by = {s: units[units["group"] == s] for s in compared}
    plan = [(a, b, by[a], by[b]) for a, b in itertools.combinations(compared, 2)]
    stats: dict[str, Any] = {
        "unit": "subject" if len(units) < len(values) else "image",
        "splits": split_statistics(values, splits, subjects, names),
    }
    if "fold" in table:
        folds = np.array([f"fold{k}" for k in table["fold"]], dtype=object)
        fold_names = [f"fold{k}" for k in sorted(set(table["fold"]))]
        stats["folds"] = split_statistics(values, folds, subjects, fold_names)
        plan += _fold_plan(split_units(values, folds, subjects), fold_names)
    comparisons = split_comparisons(plan)
    tests = decide_shifts(comparisons, cfg)
    findings = shift_findings(comparisons, compared)
    warnings += [shift_warning(f) for f in findings]
    rule = {
        "numbers": "two-sided Mann-Whitney U test; effect: Cliff's delta",
        "categories": "chi-squared test of the 2 x K counts; effect: total variation distance",
        "correction": "Bonferroni over all tests",
        "alpha": cfg.split_shift_alpha,
        "min_effect": cfg.split_shift_effect,
        "min_units": MIN_UNITS_FOR_SHIFT,
        "statistics": {**SHIFT_NUMBERS, **SHIFT_CATEGORIES},
    }
    shift = {"rule": rule, "tests": tests, "compared": compared, "comparisons": comparisons, "findings": findings}
    return {"split_stats": stats, "split_shift": shift}
