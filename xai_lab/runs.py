"""Run folders: unique, never reused ids, and the report folder that belongs to each run.

Layout (see the README)::

    <output_root>/runs/<experiment>/<run_id>/      config.yaml, best.pt, last.pt, train_log.jsonl, tb/
    <output_root>/runs/<experiment>/latest         symlink to the newest run
    <output_root>/reports/<experiment>/<run_id>/   evaluate, plots and explain outputs
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from xai_lab.config import ExperimentConfig
from xai_lab.errors import UserError


def new_run_id() -> str:
    """``YYYYmmdd-HHMMSS-xxxxxx``: sortable by start time, with random bits against collisions."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def create_run_dir(cfg: ExperimentConfig) -> Path:
    """Create a fresh run folder (``mkdir`` fails on an existing one, so an id is never reused)."""
    parent = Path(cfg.run.output_root) / "runs" / cfg.run.name
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        run_dir = parent / new_run_id()
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        _point_latest(parent, run_dir)
        return run_dir


def _point_latest(parent: Path, run_dir: Path) -> None:
    tmp = parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(run_dir.name)
        os.replace(tmp, parent / "latest")
    except OSError:  # file systems without symlinks: the newest run is still the last id in sort order
        tmp.unlink(missing_ok=True)


def resolve_run_dir(path: str | Path) -> Path:
    """The real run folder behind ``path`` (``latest`` links resolved); UserError if it is not a run."""
    run_dir = Path(path)
    if not run_dir.exists():
        raise UserError(f"run folder not found: {run_dir}")
    run_dir = run_dir.resolve()
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml); pass --run-dir artifacts/runs/<exp>/<id>")
    return run_dir


def report_dir_for(run_dir: Path) -> Path:
    """``runs/<exp>/<id>[/fold<k>]`` -> ``reports/<exp>/<id>[/fold<k>]``; else ``<run_dir>/report``."""
    run_dir = Path(run_dir)
    for runs in run_dir.parents[1:3]:  # runs/<exp>/<id>, or runs/<exp>/<cv-id>/fold<k> (cross-validation)
        if runs.name == "runs":
            return runs.parent / "reports" / run_dir.relative_to(runs)
    return run_dir / "report"


def train_log_rows(path: Path) -> list[tuple[str, dict]]:
    """``(line, row)`` for each epoch in a ``train_log.jsonl`` (``fit`` appends one JSON object per epoch).

    A crash can tear the last line mid-write: an unparseable last line is skipped. A bad line
    anywhere else is a UserError naming the file and the line. Blank lines are ignored.
    """
    text = Path(path).read_text(errors="replace")
    numbered = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    rows = []
    for k, (lineno, line) in enumerate(numbered):
        try:
            row = json.loads(line)
        except ValueError:
            if k == len(numbered) - 1:  # torn by a crash mid-write: that epoch never finished logging
                break
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            raise UserError(f"{path}, line {lineno}: not a JSON object with an epoch; each line must be one "
                            "epoch's metrics as JSON (only a torn last line is skipped)")
        rows.append((line, row))
    return rows
