"""An empty or non-mapping experiment or sweep YAML is exit 2 with one line, through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "xai_lab", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("verb, text, message", [
    ("train", "", "is empty: an experiment names its sections (run, data, model"),
    ("train", "# nothing but a comment\n", "is empty: an experiment names its sections"),
    ("train", "{}\n", "is empty: an experiment names its sections"),
    ("train", "- data: configs/data/synthfaces.yaml\n", "must be a mapping of sections (run, data, model"),
    ("train", "resnet18\n", "must be a mapping of sections"),
    ("sweep", "", "is empty: a sweep names its experiments, space, search"),
    ("sweep", "{}\n", "is empty: a sweep names its experiments"),
    ("sweep", "[configs/experiments/exp000_resnet18_saliency_synthfaces.yaml]\n", "must be a mapping with keys: name"),
])
def test_empty_or_non_mapping_yaml_is_one_line_and_exit_2(tmp_path, verb, text, message):
    (tmp_path / "x.yaml").write_text(text)
    res = _cli(verb, "--config", "x.yaml", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"xai-lab {verb}: error: x.yaml ") and message in res.stderr, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.yaml"]  # nothing written (no artifacts/, ray_results/)
