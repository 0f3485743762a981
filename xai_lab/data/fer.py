"""FER2013 and FER+ sources, read exactly as users download them.

FER2013 (Goodfellow et al., 2013) comes in two layouts:

- ``folders``: the Kaggle image-folder copy, ``<root>/{train,test}/<class>/*.jpg``; test is kept,
  val is carved from train (stratified, ``data.split.val / (train + val)`` of it);
- ``csv``: the original ``<root>/fer2013.csv`` (``emotion,pixels,Usage``): Training, PublicTest and
  PrivateTest become train, val and test. Rows are named ``fer2013.csv#<line>`` (the file's line
  number, header = line 1); malformed rows (a wrong pixel count, non-numbers, an unknown emotion
  or Usage) are reported by line, and ``data.on_bad_row`` says whether to stop or skip them.

FER+ (Barsoum et al., 2016, https://arxiv.org/abs/1608.01041) relabels FER2013 with 10 crowd
votes per image over ``neutral, happiness, surprise, sadness, anger, disgust, fear, contempt,
unknown, NF`` (NF: not a face), in two layouts:

- ``folders``: the images rendered by the FER+ script, ``<root>/FER2013{Train,Valid,Test}/`` with a
  ``label.csv`` (no header: ``image, box, 10 vote counts``) beside the PNGs;
- ``csv``: ``<root>/fer2013new.csv`` joined row by row to ``<root>/fer2013.csv`` (as the FER+ script
  does); rows without an image name are the ones FER+ dropped.

Label modes (``data.ferplus.label_mode``), see :func:`ferplus_label`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from xai_lab.config import DataConfig
from xai_lab.data.sources import Source, register_source, split_folders
from xai_lab.errors import UserError

FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # emotion 0..6
FER2013_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FER2013_CSV = "fer2013.csv"
FER_PIXELS = 48 * 48

FERPLUS_CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
FERPLUS_VOTES = FERPLUS_CLASSES + ("unknown", "NF")
FERPLUS_FOLDERS = {"FER2013Train": "train", "FER2013Valid": "val", "FER2013Test": "test"}
FERPLUS_CSV = "fer2013new.csv"


def _open_csv(path: Path):
    try:
        return open(path, newline="")
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None


def parse_pixels(text: str) -> tuple[np.ndarray | None, str]:
    """A FER2013 ``pixels`` field as uint8 [48, 48], or ``(None, why)``."""
    try:
        values = np.fromstring(text, dtype=np.int64, sep=" ")  # noqa: NPY201 - the fast text parser
    except ValueError:
        return None, "pixels hold a value that is not a whole number"
    if values.size != FER_PIXELS:
        return None, f"{values.size} pixel values, expected {FER_PIXELS} (48x48)"
    if values.min() < 0 or values.max() > 255:
        return None, "a pixel value outside 0..255"
    return values.astype(np.uint8).reshape(48, 48), ""


def read_fer2013_csv(path: Path) -> pd.DataFrame:
    """Parse ``fer2013.csv``: one row per data line.

    Returns:
        Columns ``line`` (1-based file line), ``emotion`` (int, -1 if bad), ``usage`` (as written),
        ``_pixels`` (uint8 [48, 48] or None) and ``_error`` ("" for a good row).
    """
    rows = []
    with _open_csv(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        cols = [c.strip() for c in header] if header else []
        if not {"emotion", "pixels", "Usage"} <= set(cols):
            raise UserError(
                f"{path} line 1: expected the header emotion,pixels,Usage, got {','.join(cols) or 'nothing'}"
            )
        i_emo, i_pix, i_use = cols.index("emotion"), cols.index("pixels"), cols.index("Usage")
        try:
            for rec in reader:
                line = reader.line_num
                if not rec:
                    continue
                if len(rec) != len(cols):
                    rows.append(
                        (
                            line,
                            -1,
                            "",
                            None,
                            f"{path.name} line {line}: {len(rec)} fields, expected {len(cols)}",
                        )
                    )
                    continue
                emo_text, usage = rec[i_emo].strip(), rec[i_use].strip()
                emotion = int(emo_text) if emo_text.isdigit() else -1
                pixels, why = parse_pixels(rec[i_pix])
                if emotion not in range(len(FER2013_CLASSES)):
                    why = f"emotion {emo_text!r} is not one of 0..{len(FER2013_CLASSES) - 1}"
                elif usage not in FER2013_USAGE:
                    why = why or f"Usage {usage!r} is not one of {', '.join(FER2013_USAGE)}"
                rows.append(
                    (
                        line,
                        emotion,
                        usage,
                        pixels if not why else None,
                        f"{path.name} line {line}: {why}" if why else "",
                    )
                )
        except csv.Error as e:
            raise UserError(f"{path} line {reader.line_num}: not valid CSV ({e})") from None
    return pd.DataFrame(rows, columns=["line", "emotion", "usage", "_pixels", "_error"])


def vote_entropy(votes: np.ndarray) -> np.ndarray:
    """Shannon entropy (bits) of each row's vote distribution over all 10 FER+ columns."""
    votes = np.asarray(votes, dtype=np.float64)
    total = votes.sum(axis=1, keepdims=True)
    p = np.divide(votes, total, out=np.zeros_like(votes), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(p), 0.0)
    return terms.sum(axis=1)


def ferplus_label(votes: np.ndarray, mode: str) -> tuple[int, str, np.ndarray | None]:
    """The label of one FER+ image from its 10 vote counts.

    ``majority`` (Barsoum et al. 2016, as in the FER+ reference code): votes of 1 are dropped
    as outliers; the top entry must hold more than half of the remaining votes (unknown and NF
    count in that total), else the image is left out ("no majority"); an image whose majority
    is unknown or NF is left out. A tie cannot win (two entries cannot both exceed half).

    ``plurality``: the entry with the most (raw) votes; left out on a tie for the top ("tie")
    or when the top is unknown or NF.

    ``probability``: votes of 1 dropped as in majority; left out when unknown or NF has at least
    as many votes as every emotion; the target is the emotion votes normalised to sum 1, and the
    hard label (for metrics) its argmax, the first in FER+ order on a tie.

    Returns:
        ``(label index or -1, reason left out or "", soft target [8] or None)``.
    """
    v = np.asarray(votes, dtype=np.float64)
    n_emo = len(FERPLUS_CLASSES)
    if mode == "plurality":
        top = v.max()
        winners = np.flatnonzero(v == top)
        if top <= 0 or len(winners) > 1:
            return -1, "tie", None
        win = int(winners[0])
        return (win, "", None) if win < n_emo else (-1, FERPLUS_VOTES[win], None)
    v = np.where(v <= 1, 0.0, v)  # single votes are outliers
    if mode == "majority":
        win = int(v.argmax())
        if v[win] <= 0.5 * v.sum():
            return -1, "no majority", None
        return (win, "", None) if win < n_emo else (-1, FERPLUS_VOTES[win], None)
    if mode == "probability":
        emo, other = v[:n_emo], v[n_emo:]
        if emo.max() <= 0 or emo.max() <= other.max():
            return -1, FERPLUS_VOTES[n_emo + int(other.argmax())] if other.max() > 0 else "no votes", None
        p = emo / emo.sum()
        return int(p.argmax()), "", p
    raise UserError(
        f"config key 'data.ferplus.label_mode' must be majority, plurality or probability, got {mode!r}"
    )


def _layout(data: DataConfig, folders_found: bool, csv_name: str) -> str:
    if data.layout != "auto":
        return data.layout
    root = Path(data.root)
    if folders_found:
        return "folders"
    if (root / csv_name).is_file():
        return "csv"
    return "folders"


@register_source
class FER2013Source(Source):
    """FER2013: the Kaggle image folders or the original ``fer2013.csv`` (``data.layout``)."""

    name = "fer2013"

    def class_names(self, data: DataConfig) -> list[str]:
        return list(FER2013_CLASSES)

    def list_images(self, data: DataConfig) -> pd.DataFrame:
        root = Path(data.root)
        layout = _layout(data, bool(split_folders(root)), FER2013_CSV)
        if layout == "csv":
            return self._list_csv(root / FER2013_CSV)
        if not split_folders(root):
            raise UserError(
                f"FER2013 folders not found: expected {root}/train/<class>/*.jpg and {root}/test/<class>/"
                f"*.jpg (or {root}/{FER2013_CSV} with data.layout=csv)"
            )
        return super().list_images(data)

    def _list_csv(self, path: Path) -> pd.DataFrame:
        raw = read_fer2013_csv(path)
        good = raw["_error"] == ""
        return pd.DataFrame(
            {
                "path": [f"{path.name}#{n}" for n in raw["line"]],
                "label": [
                    FER2013_CLASSES[e] if ok else "" for e, ok in zip(raw["emotion"], good, strict=True)
                ],
                "subject": [f"{path.stem}_{n}" for n in raw["line"]],
                "split": [FER2013_USAGE.get(u, "") for u in raw["usage"]],
                "usage": raw["usage"],
                "_pixels": raw["_pixels"],
                "_error": raw["_error"],
            }
        )


@register_source
class FERPlusSource(Source):
    """FER+: FER2013 relabelled by 10 annotators each; 8 classes with contempt (``data.ferplus``)."""

    name = "ferplus"

    def class_names(self, data: DataConfig) -> list[str]:
        return list(FERPLUS_CLASSES)

    def list_images(self, data: DataConfig) -> pd.DataFrame:
        root = Path(data.root)
        found = [f for f in FERPLUS_FOLDERS if (root / f).is_dir()]
        layout = _layout(data, bool(found), FERPLUS_CSV)
        if layout == "csv":
            table = self._list_csv(root)
        else:
            if "FER2013Train" not in found:
                raise UserError(
                    f"FER+ folders not found: expected {root}/FER2013Train/label.csv (and FER2013Valid, "
                    f"FER2013Test), or {root}/{FERPLUS_CSV} with {root}/{FER2013_CSV} and data.layout=csv"
                )
            table = pd.concat([self._list_folder(root, f) for f in found], ignore_index=True)
        return self._label(table, data.ferplus.label_mode)

    def _list_folder(self, root: Path, folder: str) -> pd.DataFrame:
        """One FER2013{Train,Valid,Test}/label.csv: ``image,box,<10 votes>`` without a header."""
        path = root / folder / "label.csv"
        rows = []
        with _open_csv(path) as f:
            reader = csv.reader(f)
            try:
                for rec in reader:
                    if not rec:
                        continue
                    where, name = f"{folder}/label.csv line {reader.line_num}", rec[0].strip()
                    votes, why = _votes(rec[2:])
                    if len(rec) != 2 + len(FERPLUS_VOTES):
                        votes, why = (
                            None,
                            f"{len(rec)} fields, expected {2 + len(FERPLUS_VOTES)} (image, box, 10 votes)",
                        )
                    elif not why and not (root / folder / name).is_file():
                        why = f"names a missing image {folder}/{name}"
                    rows.append(
                        (
                            f"{folder}/{name}",
                            name,
                            FERPLUS_FOLDERS[folder],
                            votes,
                            f"{where}: {why}" if why else "",
                        )
                    )
            except csv.Error as e:
                raise UserError(f"{path} line {reader.line_num}: not valid CSV ({e})") from None
        return pd.DataFrame(rows, columns=["path", "image", "split", "_votes", "_error"])

    def _list_csv(self, root: Path) -> pd.DataFrame:
        """fer2013new.csv joined row by row to fer2013.csv (their Usage columns must agree)."""
        fer = read_fer2013_csv(root / FER2013_CSV)
        plus_path = root / FERPLUS_CSV
        rows = []
        with _open_csv(plus_path) as f:
            reader = csv.reader(f)
            header = [c.strip() for c in next(reader, [])]
            expected = ["Usage", "Image name", *FERPLUS_VOTES]
            if header != expected:
                raise UserError(f"{plus_path} line 1: expected the header {','.join(expected)}")
            for rec in reader:
                if rec:
                    votes, why = (
                        _votes(rec[2:]) if len(rec) == len(expected) else (None, f"{len(rec)} fields")
                    )
                    rows.append(
                        (reader.line_num, rec[0].strip(), rec[1].strip() if len(rec) > 1 else "", votes, why)
                    )
        if len(rows) != len(fer):
            raise UserError(
                f"{plus_path} has {len(rows)} rows but {root / FER2013_CSV} has {len(fer)}: FER+ joins "
                "them row by row, so both must be the complete files"
            )
        out = []
        for (line, usage, image, votes, why), (_, f_row) in zip(rows, fer.iterrows(), strict=True):
            if usage != f_row["usage"] and not why:
                raise UserError(
                    f"{plus_path} line {line} says Usage {usage!r} but {FER2013_CSV} line {f_row['line']} "
                    f"says {f_row['usage']!r}: the files are not aligned"
                )
            error = f"{FERPLUS_CSV} line {line}: {why}" if why else f_row["_error"]
            out.append(
                (
                    f"{FER2013_CSV}#{f_row['line']}",
                    image,
                    FER2013_USAGE.get(usage, ""),
                    votes,
                    error,
                    f_row["_pixels"],
                    "" if image else "no image name (dropped by FER+)",
                )
            )
        return pd.DataFrame(
            out, columns=["path", "image", "split", "_votes", "_error", "_pixels", "_excluded"]
        )

    def _label(self, table: pd.DataFrame, mode: str) -> pd.DataFrame:
        """Votes -> label (per ``mode``), vote columns, vote entropy and, for probability, ``p_<class>``."""
        n = len(table)
        votes = np.zeros((n, len(FERPLUS_VOTES)))
        ok = table["_error"] == ""
        if ok.any():
            votes[ok.to_numpy()] = np.stack(table.loc[ok, "_votes"].to_list())
        labels, probs = [""] * n, np.zeros((n, len(FERPLUS_CLASSES)))
        excluded = table["_excluded"].tolist() if "_excluded" in table else [""] * n
        for i in np.flatnonzero(ok.to_numpy()):
            if excluded[i]:
                continue
            idx, reason, p = ferplus_label(votes[i], mode)
            if idx < 0:
                excluded[i] = reason
                continue
            labels[i] = FERPLUS_CLASSES[idx]
            if p is not None:
                probs[i] = p
        out = pd.DataFrame(
            {
                "path": table["path"],
                "label": labels,
                "subject": table["image"].map(lambda s: Path(s).stem if s else ""),
                "split": table["split"],
                "image": table["image"],
            }
        )
        for j, name in enumerate(FERPLUS_VOTES):
            out[f"votes_{name}"] = votes[:, j].astype(int)
        out["vote_entropy"] = vote_entropy(votes).round(4)
        if mode == "probability":
            for j, name in enumerate(FERPLUS_CLASSES):
                out[f"p_{name}"] = probs[:, j].round(6)
        out["subject"] = out["subject"].where(out["subject"] != "", out["path"])
        out["_error"], out["_excluded"] = table["_error"].to_numpy(), excluded
        if "_pixels" in table:
            out["_pixels"] = table["_pixels"].to_numpy()
        return out


def _votes(fields: list[str]) -> tuple[np.ndarray | None, str]:
    values = [f.strip() for f in fields]
    if len(values) != len(FERPLUS_VOTES) or not all(v.isdigit() for v in values):
        return None, f"expected {len(FERPLUS_VOTES)} whole-number vote counts, got {','.join(values)!r}"
    return np.array([int(v) for v in values], dtype=np.float64), ""
