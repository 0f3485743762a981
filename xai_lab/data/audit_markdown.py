"""``audit.md`` and the terminal summary: the audit report (``audit.json``) read out for people."""

from __future__ import annotations

from typing import Any

from xai_lab.data.split_shift import OTHER_FOLDS, SHIFT_CATEGORIES, SHIFT_NUMBERS, SPLIT_ORDER, shift_warning


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few lines for the terminal."""
    ex, near, subj, bal = (
        report["exact_duplicates"],
        report["near_duplicates"],
        report["subjects"],
        report["class_balance"],
    )
    s = report["split_sizes"]
    lines = [
        f"audit of {report['dataset']}: {report['images']} images, "
        f"{len(report['classes'])} classes, "
        f"train/val/test {s['train']}/{s['val']}/{s['test']}",
        f"  exact duplicates: {ex['groups']} group(s) of {ex['images']} images; "
        f"{ex['across_splits']} across splits, "
        f"{ex['across_classes']} across classes (label conflicts)",
        f"  near duplicates (pHash <= {near['max_distance']} bits, "
        f"gray difference <= {near['max_pixel_delta']:g}): "
        f"{near['pairs']} pair(s); "
        f"{near['across_splits']} across splits, {near['across_classes']} across classes",
        f"  blank images: {report['blank_images']['images']}",
        f"  subjects: {subj['subjects']}, in more than one split: {subj['in_more_than_one_split']}"
        + (
            f"; folds with a subject in two splits: {subj['folds_with_subject_in_two_splits']}"
            if "per_fold" in subj
            else ""
        ),
        f"  class balance: largest/smallest = {bal['imbalance_ratio']} "
        f"({bal['largest']} / {bal['smallest']})",
    ]
    marks = report.get("landmarks")
    if marks:
        splits = ", ".join(f"{s} {v:.0%}" for s, v in marks["by_split"].items())
        lines.append(f"  landmarks: detected on {marks['detected_fraction']:.0%} of the faces ({splits}), "
                     f"fitted from the crop on the rest; gallery: {marks['gallery']}")
    shift = report.get("split_shift")
    if shift:
        lines.append(
            f"  split shift ({report['split_stats']['unit']}s; Bonferroni p < {shift['rule']['alpha']:g}, "
            f"|effect| >= {shift['rule']['min_effect']:g}): {len(shift['findings'])} finding(s) in "
            f"{shift['tests']} tests"
        )
    prep = report["prepare"]
    if prep["skipped"] or prep["excluded"] or prep["dedup"]["dropped"]:
        excluded = ", ".join(f"{k} {v}" for k, v in prep["excluded"].items()) or "none"
        lines.append(
            f"  prepare: skipped {prep['skipped']}, excluded {excluded}, dedup={prep['dedup']['mode']} "
            f"dropped {prep['dedup']['dropped']}"
        )
    lines += [f"  warning: {w}" for w in report["warnings"]]
    return lines


def exact_duplicates_markdown(ex: dict[str, Any]) -> list[str]:
    """The ``audit.md`` section on exact duplicates: the counts and a table of the example groups."""
    md = [
        "",
        "## Exact duplicates (same SHA-1)",
        "",
        f"{ex['groups']} group(s), {ex['images']} images: {ex['within_one_split']} within one split, "
        f"{ex['across_splits']} across splits, {ex['across_classes']} across classes.",
        "",
    ]
    if ex["examples"]:
        md += ["| files | labels | splits |", "|---|---|---|"]
        md += [
            f"| {'<br>'.join(e['paths'])} | {', '.join(e['labels'])} | {', '.join(e['splits'])} |"
            for e in ex["examples"]
        ]
    return md


def near_duplicates_markdown(near: dict[str, Any]) -> list[str]:
    """The ``audit.md`` section on near duplicates: the thresholds, the counts and a table of the example pairs."""
    md = [
        "",
        f"## Near duplicates (pHash <= {near['max_distance']} bits, mean gray difference <= "
        f"{near['max_pixel_delta']:g}, not byte-identical)",
        "",
        f"{near['pairs']} pair(s): {near['across_splits']} across splits, "
        f"{near['across_classes']} across classes, "
        f"{near['same_subject']} of the same subject.",
        "",
    ]
    if near["examples"]:
        md += ["| files | labels | splits | distance |", "|---|---|---|---|"]
        md += [
            f"| {'<br>'.join(e['paths'])} | {', '.join(e['labels'])} | {', '.join(e['splits'])} "
            f"| {e['distance']} |"
            for e in near["examples"]
        ]
    return md


def subjects_markdown(subj: dict[str, Any]) -> list[str]:
    """The ``audit.md`` section on subjects: how many, whether the splits group them, which cross splits."""
    md = [
        "",
        "## Subjects",
        "",
        f"{subj['subjects']} subject(s), at most {subj['images_per_subject_max']} images each; "
        f"grouped splits: "
        f"{subj['grouped_by_subject']}; in more than one split: {subj['in_more_than_one_split']}.",
    ]
    if "per_fold" in subj:
        md.append(f"Folds: subjects in two splits per fold: {subj['per_fold']}.")
    return md


def per_class_markdown(per_class: dict[str, Any]) -> list[str]:
    """The ``audit.md`` table of sizes, modes and brightness per class."""
    md = [
        "",
        "## Per class",
        "",
        "| class | images | sizes | modes | brightness (mean ± std) |",
        "|---|---|---|---|---|",
    ]
    for c, v in per_class.items():
        if not v["images"]:
            md.append(f"| {c} | 0 | | | |")
            continue
        sizes = ", ".join(f"{k}: {n}" for k, n in v["sizes"].items())
        modes = ", ".join(f"{k}: {n}" for k, n in v["modes"].items())
        md.append(
            f"| {c} | {v['images']} | {sizes} | {modes} | {v['brightness_mean']} ± {v['brightness_std']} |"
        )
    return md


def class_balance_markdown(bal: dict[str, Any]) -> list[str]:
    """The ``audit.md`` table of images per class and split, and the largest/smallest ratio."""
    md = [
        "",
        "## Class balance",
        "",
        "| class | " + " | ".join(SPLIT_ORDER) + " | total |",
        "|---|" + "---|" * (len(SPLIT_ORDER) + 1),
    ]
    for c, total in bal["counts"].items():
        md.append(f"| {c} | " + " | ".join(str(bal["by_split"][s][c]) for s in SPLIT_ORDER) + f" | {total} |")
    return md + ["", f"Largest/smallest class: {bal['imbalance_ratio']}.", ""]


def left_out_markdown(prep: dict[str, Any]) -> list[str]:
    """The ``audit.md`` section on the rows ``prepare`` skipped, excluded or deduplicated."""
    return [
        "## What prepare left out",
        "",
        f"- skipped (unreadable or malformed, with on_bad_* = skip): {prep['skipped']}",
        f"- excluded by the labelling rule: {prep['excluded'] or 'none'}",
        f"- dedup = {prep['dedup']['mode']}: {prep['dedup']['dropped']} dropped",
        "",
    ]


def audit_markdown(report: dict[str, Any]) -> str:
    """``audit.md``: the report for people, a summary and then one section per check."""
    md = [
        f"# Data audit: {report['dataset']}",
        "",
        f"Source `{report['source']}` at `{report['root']}`: {report['images']} images, "
        f"classes {', '.join(report['classes'])}.",
        "",
        "## Summary",
        "",
    ]
    md += [f"- {line.strip()}" for line in summary_lines(report)[1:]]
    if not report["warnings"]:
        md.append("- no warnings")
    md += exact_duplicates_markdown(report["exact_duplicates"])
    md += near_duplicates_markdown(report["near_duplicates"])
    md += subjects_markdown(report["subjects"])
    md += per_class_markdown(report["per_class"])
    md += class_balance_markdown(report["class_balance"])
    md += split_shift_markdown(report)
    md += landmarks_markdown(report.get("landmarks"))
    md += left_out_markdown(report["prepare"])
    return "\n".join(md)


def landmarks_markdown(marks: dict[str, Any] | None) -> list[str]:
    """The ``audit.md`` section on facial landmarks: where dlib's detector found the face, per split and class."""
    if not marks:
        return []
    lines = ["", "## Facial landmarks", "",
             f"dlib's 68 points on every face ({marks['model']}). Detected: dlib's HOG detector found the face and "
             "the points were fitted in its box; fitted: it found none and the points were fitted in the median "
             "box of the detected faces. Regions from fitted faces are less trustworthy; look at the gallery "
             f"(`{marks['gallery']}`).", "",
             f"Detected on {marks['detected']} of {marks['n']} faces ({marks['detected_fraction']:.1%}).", "",
             "| split or class | detected |", "|---|---|"]
    lines += [f"| {s} | {v:.1%} |" for s, v in {**marks["by_split"], **marks["by_class"]}.items()]
    return [*lines, ""]


def split_shift_markdown(report: dict[str, Any]) -> list[str]:
    """The ``audit.md`` section comparing the splits (and folds)."""
    stats, shift = report.get("split_stats"), report.get("split_shift")
    if not stats or not shift:
        return []
    rule, unit = shift["rule"], stats["unit"]
    md = [
        "## Splits compared (distribution shift)",
        "",
        "Per image, on the decoded cache: " + "; ".join(f"{k}: {v}" for k, v in SHIFT_NUMBERS.items())
        + ". From the manifest: " + ", ".join(f"{k} ({v})" for k, v in SHIFT_CATEGORIES.items())
        + f". One value per {unit} is tested (the median; the most frequent size, mode, type). "
        f"Each pair of splits with at least {rule['min_units']} {unit}s, and each fold's test set against the "
        "other folds, is compared with a two-sided Mann-Whitney U test and Cliff's delta (numbers) or a "
        "chi-squared test and the total variation distance (size, mode, format). A shift is reported when the "
        f"Bonferroni-corrected p ({shift['tests']} tests) is below {rule['alpha']:g} and the effect is at "
        f"least {rule['min_effect']:g}.",
        "",
        "| split | images | subjects | " + " | ".join([*SHIFT_CATEGORIES, *SHIFT_NUMBERS]) + " |",
        "|---" * (3 + len(SHIFT_CATEGORIES) + len(SHIFT_NUMBERS)) + "|",
    ]
    for name, row in {**stats["splits"], **stats.get("folds", {})}.items():
        mix = [", ".join(f"{k}: {n}" for k, n in row[c].items()) for c in SHIFT_CATEGORIES]
        nums = [str(row[c].get("median", "")) for c in SHIFT_NUMBERS]
        md.append(f"| {name} | {row['images']} | {row['subjects']} | " + " | ".join(mix + nums) + " |")
    md += [
        "",
        "Medians per image above. The comparisons (effect: Cliff's delta of the first side over the second, or the "
        "total variation; the folds' comparisons only when flagged; size, mode and format only where they vary):",
        "",
        "| statistic | split / against | n | values | effect | p (Bonferroni) | shift |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in shift["comparisons"]:
        if c["p"] is not None and (c["against"] != OTHER_FOLDS or c["shift"]):
            md.append(
                f"| {c['statistic']} | {c['split']} / {c['against']} | {c['n'][0]} / {c['n'][1]} "
                f"| {c['values'][0]} / {c['values'][1]} | {c['effect']:+.2f} | {c['p_bonferroni']:.3g} "
                f"| {'**yes**' if c['shift'] else ''} |"
            )
    md += [""] + ([f"- {shift_warning(f)}" for f in shift["findings"]] or ["- no split shift"])
    return md + [""]
