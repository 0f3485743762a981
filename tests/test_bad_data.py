"""Bad data, built as fixtures in tmp: one line naming the file or row, exit code 2, nothing overwritten."""

import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, SHARED

from xai_lab.cli import main

CK = SHARED / "ckplus48"
FER_CSV = SHARED / "fer2013-csv-sample" / "fer2013.csv"


def _folder_dataset(root, per_class=6):
    """A small folder dataset of real CK+ images: anger/ and happy/."""
    for cls in ("anger", "happy"):
        (root / cls).mkdir(parents=True)
        for src in sorted((CK / cls).iterdir())[:per_class]:
            shutil.copy(src, root / cls / src.name)
    return root


def _experiment(tmp_path, data: dict) -> str:
    exp = tmp_path / "exp.yaml"
    values = {"processed_root": str(tmp_path / "processed"), "name": "bad", **data}
    exp.write_text("run: {progress: false}\ndata: " + json.dumps(values) + "\n")
    return str(exp)


def _prepare(exp: str, capsys, *overrides) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["-q", "prepare", "--config", exp, *overrides])
    return code, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_truncated_image_exits_2_and_keeps_the_earlier_prepare(tmp_path, capsys):
    raw = _folder_dataset(tmp_path / "raw")
    exp = _experiment(tmp_path, {"source": "folder", "root": str(raw)})
    assert _prepare(exp, capsys)[0] == 0
    metadata = (tmp_path / "processed" / "bad" / "metadata.csv").read_bytes()
    good = sorted((CK / "anger").iterdir())[20].read_bytes()
    (raw / "anger" / "S999_001_00000001.png").write_bytes(good[: len(good) // 2])
    code, err = _prepare(exp, capsys)
    line = _one_line(err)
    assert code == 2 and "S999_001_00000001.png" in line and "data.on_bad_image=skip" in line
    assert (tmp_path / "processed" / "bad" / "metadata.csv").read_bytes() == metadata  # nothing overwritten
    code, err = _prepare(exp, capsys, "data.on_bad_image=skip")
    skipped = json.loads((tmp_path / "processed" / "bad" / "dataset.json").read_text())["skipped"]
    assert code == 0 and [s["path"] for s in skipped] == ["anger/S999_001_00000001.png"]


def test_a_file_that_is_not_an_image(tmp_path, capsys):
    raw = _folder_dataset(tmp_path / "raw")
    (raw / "happy" / "notes.jpg").write_text("not an image\n")
    code, err = _prepare(_experiment(tmp_path, {"source": "folder", "root": str(raw)}), capsys)
    assert code == 2 and "happy/notes.jpg: not a readable image" in _one_line(err)


def test_an_empty_class_folder(tmp_path, capsys):
    raw = _folder_dataset(tmp_path / "raw")
    (raw / "sadness").mkdir()
    code, err = _prepare(_experiment(tmp_path, {"source": "ckplus", "root": str(raw)}), capsys)
    assert code == 2 and "empty class folder" in _one_line(err) and "sadness" in err


def test_a_csv_with_a_short_pixel_row(tmp_path, capsys):
    lines = FER_CSV.read_text().splitlines()
    emotion, pixels, usage = lines[2].split(",")
    lines[2] = ",".join([emotion, pixels.rsplit(" ", 1)[0], usage])  # 2303 values on line 3
    lines[5] = "9," + lines[5].split(",", 1)[1]  # emotion 9 on line 6
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "fer2013.csv").write_text("\n".join(lines) + "\n")
    exp = _experiment(tmp_path, {"source": "fer2013", "root": str(tmp_path / "raw"), "layout": "csv"})
    code, err = _prepare(exp, capsys)
    line = _one_line(err)
    assert code == 2 and "2 malformed row(s)" in line
    assert "fer2013.csv line 3: 2303 pixel values, expected 2304" in line
    assert "fer2013.csv line 6: emotion '9' is not one of 0..6" in line and "data.on_bad_row=skip" in line
    code, _ = _prepare(exp, capsys, "data.on_bad_row=skip")
    info = json.loads((tmp_path / "processed" / "bad" / "dataset.json").read_text())
    assert (
        code == 0
        and info["n_images"] == 229
        and [s["path"] for s in info["skipped"]] == ["fer2013.csv#3", "fer2013.csv#6"]
    )


def test_label_csv_naming_a_missing_image(tmp_path, capsys):
    src = SHARED / "ferplus-sample"
    for folder in ("FER2013Train", "FER2013Valid"):
        (tmp_path / "raw" / folder).mkdir(parents=True)
        rows = (src / folder / "label.csv").read_text().splitlines()[:4]
        for row in rows:
            name = row.split(",")[0]
            shutil.copy(src / folder / name, tmp_path / "raw" / folder / name)
        (tmp_path / "raw" / folder / "label.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "raw" / "FER2013Train" / "fer0002030.png").unlink()
    code, err = _prepare(_experiment(tmp_path, {"source": "ferplus", "root": str(tmp_path / "raw")}), capsys)
    assert (
        code == 2
        and "FER2013Train/label.csv line 3: names a missing image FER2013Train/fer0002030.png"
        in _one_line(err)
    )


def test_bad_keys_and_paths_exit_2_in_a_real_process(tmp_path):
    exp = _experiment(tmp_path, {"source": "ferplus", "root": str(tmp_path / "nowhere")})
    cmd = [sys.executable, "-m", "xai_lab", "audit", "--config", exp]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and _one_line(proc.stderr).startswith("xai-lab audit: error:")
    assert "nowhere" in proc.stderr
    proc = subprocess.run(
        cmd + ["data.ferplus.label_mode=vote"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "data.ferplus.label_mode" in _one_line(proc.stderr)


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("data.folds=2", "data.folds"),
        ("data.fold=3", "data.fold"),
        ("data.dedup=some", "data.dedup"),
        ("data.audit.near_duplicate_distance=65", "near_duplicate_distance"),
    ],
)
def test_bad_data_keys(tmp_path, capsys, override, pattern):
    exp = _experiment(tmp_path, {"source": "ckplus", "root": str(CK)})
    code, err = _prepare(exp, capsys, override)
    assert code == 2 and pattern in _one_line(err)
