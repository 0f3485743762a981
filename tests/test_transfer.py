"""The transfer matrix and ``xai-lab compare``: known answers on hand-made logits, then real runs trained on the
shared samples (CK+, FER2013, FER+) and on a folder dataset that shares no emotion with them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SHARED, make_folder_dataset
from report_browser import Elements

from xai_lab.cli import main
from xai_lab.data.fer import FER2013_CLASSES, FERPLUS_CLASSES
from xai_lab.evaluate import score_on_shared_classes
from xai_lab.experiment import load_experiment
from xai_lab.train import fit
from xai_lab.transfer import plan_transfer, transfer_sentence, transfer_table

CKPLUS = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
CLASSES = {"ck": CKPLUS, "fer2013": list(FER2013_CLASSES), "ferplus": list(FERPLUS_CLASSES)}


def test_plan_scores_each_cross_pair_on_its_shared_classes_and_the_diagonal_on_each_reference():
    plan = plan_transfer({**CLASSES, "objects": ["cat", "dog"]})
    assert plan[("ck", "fer2013")] == [None] and plan[("ferplus", "ck")] == [None]
    # FER2013's own model: every class, and the six it shares with CK+ (no neutral); FER+ shares all seven
    assert plan[("fer2013", "fer2013")] == [None, ("happiness", "surprise", "sadness", "anger", "disgust", "fear")]
    assert plan[("ck", "ck")] == [None, ("happiness", "surprise", "sadness", "anger", "disgust", "fear")]
    assert sorted(plan[("ferplus", "ferplus")], key=str) == sorted(
        [None, ("happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"),
         ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear")], key=str)
    assert plan[("objects", "ck")] == [] and plan[("ck", "objects")] == [] and plan[("objects", "objects")] == [None]


def test_scoring_over_shared_classes_restricts_the_prediction_to_them():
    """A FER2013-style model on CK+-style labels: neutral (the model's) is never predicted, contempt (the data's)
    is left out; restricting to two emotions re-decides among those two."""
    model = ["angry", "happy", "neutral"]
    data = ["anger", "contempt", "happy"]
    logits = np.array([[2.0, 0.0, 5.0],   # anger: neutral is highest, but only anger/happy count -> anger (right)
                       [0.0, 1.0, 0.0],   # contempt: left out
                       [3.0, 1.0, 0.0],   # happy, called anger (wrong)
                       [0.0, 4.0, 1.0]])  # happy, right
    labels = np.array([0, 1, 2, 2])
    summary, cm = score_on_shared_classes(logits, labels, model, data)
    assert summary["shared_classes"] == ["happiness", "anger"]
    assert summary["n"] == 3 and summary["n_left_out"] == 1 and summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["accuracy_all_outputs"] == pytest.approx(1 / 3)  # over all outputs neutral wins the first
    assert cm.tolist() == [[1, 1], [0, 1]]  # rows: happiness, anger
    only, _ = score_on_shared_classes(logits, labels, model, data, ["anger"])
    assert only["n"] == 1 and only["accuracy"] == 1.0
    none, _ = score_on_shared_classes(logits[:2], np.array([1, 1]), model, data)  # no image of a shared class
    assert none["n"] == 0 and np.isnan(none["accuracy"])


def _cell(classes, n, acc):
    return {"classes": classes, "scored": list(classes) if classes else ["happiness", "anger"], "n": n,
            "accuracy": acc, "macro_f1": acc, "accuracy_all_outputs": acc, "n_left_out": 0, "per_class_f1": {}}


def test_table_joins_each_cross_cell_to_its_in_domain_reference_and_the_sentence_states_the_gap():
    scores = {
        ("a", "a"): [_cell(None, 100, 0.9)],
        ("b", "b"): [_cell(None, 50, 0.8) | {"scored": ["happiness", "anger", "fear"],
                                             "per_class_f1": {"happiness": 0.9, "anger": 0.7, "fear": 0.8}},
                     _cell(("happiness", "anger"), 40, 0.86)],
        ("a", "b"): [_cell(None, 40, 0.5)],
        ("b", "a"): [_cell(None, 100, 0.6)],
        ("a", "c"): [], ("c", "a"): [], ("c", "c"): [_cell(None, 10, 1.0)], ("b", "c"): [],
        ("c", "b"): [],
    }
    table = transfer_table(["a", "b", "c"], scores, failed={("b", "c"): "failed: OSError: boom"})
    assert len(table) == 9 and list(table["trained_on"][:3]) == ["a", "a", "a"]
    ab = table[(table.trained_on == "a") & (table.tested_on == "b")].iloc[0]
    # b's own model on b's faces of the two classes a knows: 0.86, so training on a costs 0.36 there
    assert ab["in_domain_accuracy"] == pytest.approx(0.86) and ab["gap"] == pytest.approx(0.36)
    ba = table[(table.trained_on == "b") & (table.tested_on == "a")].iloc[0]
    assert ba["in_domain_accuracy"] == pytest.approx(0.9) and ba["gap"] == pytest.approx(0.3)  # a shares all of its
    notes = dict(zip(zip(table.trained_on, table.tested_on, strict=True), table.note, strict=True))
    assert notes[("a", "c")] == "no shared class" and notes[("b", "c")] == "failed: OSError: boom"
    assert table.loc[table.note != "", "n"].eq(0).all()
    # per-class F1 columns for the classes scored; empty where a cell did not score the class
    assert list(table.columns[-3:]) == ["f1:happiness", "f1:anger", "f1:fear"]
    bb = table[(table.trained_on == "b") & (table.tested_on == "b")].iloc[0]
    assert bb["f1:anger"] == pytest.approx(0.7) and pd.isna(ab["f1:anger"])
    sentence = transfer_sentence(table)
    assert sentence.startswith("In-domain test accuracy averages 0.90; across datasets 0.55 over the classes each")
    assert "0.33 below the target dataset's own model on the same faces and classes (0.88)" in sentence
    assert "best transfer b → a (0.60), worst a → b (0.50)" in sentence
    assert transfer_sentence(table[table.in_domain]) is None


TINY = ["run.progress=false", "run.device=cpu", "train.epochs=2", "train.batch_size=16", "train.warmup_epochs=0",
        "model.name=resnet8", "train.eval_batch_size=64"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four tiny runs on real layouts: CK+ (8 faces a class), the FER2013 and FER+ samples, and a folder dataset
    of objects (no emotion)."""
    tmp = tmp_path_factory.mktemp("transfer")
    make_folder_dataset(tmp / "objects", ["cat", "dog", "bird"], 12)
    common = [*TINY, f"data.processed_root={tmp / 'processed'}", f"run.output_root={tmp / 'artifacts'}"]
    specs = {
        "ck": ("exp004_resnet20_ckplus.yaml", [f"data.root={SHARED / 'ckplus48'}", "data.limit_per_class=8",
                                               "data.name=ck8", "data.folds=0"]),
        "fer2013": ("exp011_resnet20_fer2013_cpu.yaml", [f"data.root={SHARED / 'fer2013-sample'}",
                                                        "data.name=fer2013s"]),
        "ferplus": ("exp021_resnet20_ferplus_cpu.yaml", [f"data.root={SHARED / 'ferplus-sample'}",
                                                        "data.name=ferpluss"]),
        "objects": ("exp011_resnet20_fer2013_cpu.yaml", ["data.source=folder", f"data.root={tmp / 'objects'}",
                                                        "data.name=objects"]),
    }
    out = {}
    for name, (exp, extra) in specs.items():
        cfg = load_experiment(ROOT / "configs" / "experiments" / exp, [*common, *extra])
        out[name] = fit(cfg)["run_dir"]
    return tmp, out


def test_compare_writes_reports_transfer_matrix_and_page(runs, capsys):
    tmp, run_dirs = runs
    out = tmp / "cmp"
    args = ["-q", "compare", "--runs", *run_dirs.values(), "--out", str(out), "--methods", "gradcam", "--smoke",
            "explain.class_means=2"]
    assert main(args) == 0, capsys.readouterr().err
    assert f"report: {(out / 'index.html').resolve()}" in capsys.readouterr().out
    board = pd.read_csv(out / "leaderboard.csv")
    assert list(board["dataset"]) == ["ck8", "fer2013s", "ferpluss", "objects"] and set(board["report"]) == {"ok"}
    for row in board.itertuples():
        report = out / "reports" / row.dataset / row.trial_id
        assert json.loads((report / "test_summary.json").read_text())["n"] > 0
        assert (report / "xai" / "gradcam" / "class_means.npz").is_file()
    table = pd.read_csv(out / "transfer.csv", keep_default_na=False)
    assert len(table) == 16
    cell = {(r.trained_on, r.tested_on): r for r in table.itertuples()}
    # CK+ -> FER2013: six shared classes (no contempt, no neutral), FER2013's own model on the same faces beside it
    ck_fer = cell[("ck8", "fer2013s")]
    assert ck_fer.classes.split() == ["happiness", "surprise", "sadness", "anger", "disgust", "fear"]
    assert ck_fer.n > 0 and 0 <= float(ck_fer.accuracy) <= 1 and ck_fer.in_domain_accuracy != ""
    # each shared class's F1 in its own column; CK+'s model scores no neutral on FER2013's faces
    f1 = table.set_index(["trained_on", "tested_on"]).loc[("ck8", "fer2013s")]
    assert all(0 <= float(f1[f"f1:{c}"]) <= 1 for c in ck_fer.classes.split()) and f1["f1:neutral"] == ""
    fer_own = json.loads(next((out / "reports" / "fer2013s").glob("*/test_summary.json")).read_text())
    assert cell[("fer2013s", "fer2013s")].n == fer_own["n"]  # the diagonal is the whole test split
    assert float(cell[("fer2013s", "fer2013s")].accuracy) == pytest.approx(fer_own["accuracy"])
    # the objects share nothing with the faces: a note, no numbers, no crash
    for pair in [("objects", "ck8"), ("ck8", "objects"), ("ferpluss", "objects")]:
        assert cell[pair].note == "no shared class" and cell[pair].n == 0 and cell[pair].accuracy == ""
    assert (out / "transfer.png").stat().st_size > 5000
    # the same faces by two models: every ordered pair of face datasets, none with the objects
    agree = pd.read_csv(out / "agreement.csv")
    assert {(r.faces_of, r.model) for r in agree.itertuples()} == {
        (a, b) for a in ("ck8", "fer2013s", "ferpluss") for b in ("ck8", "fer2013s", "ferpluss") if a != b}
    assert agree["spearman"].between(-1, 1).all() and agree["top20_iou"].between(0, 1).all()
    assert (agree["spearman_low"] <= agree["spearman"]).all() and (agree["n"] > 0).all()
    page = Elements((out / "index.html").read_text())
    assert page.having(data_section="comparison-agreement")
    assert not (out / "regions.csv").exists()  # the objects share no class with the faces: no figures over them
    assert page.having(id="transfer") and page.having("img", src="transfer.png")
    assert "Comparison cmp" in page.text and "In-domain test accuracy averages" in page.text  # --out's name
    assert page.having(data_section="comparison-explanations")
    # never over an earlier result
    assert main(args) == 2 and "already exists and is not empty" in capsys.readouterr().err


def test_compare_refuses_bad_input_in_one_line(runs, capsys, tmp_path):
    _, run_dirs = runs
    ck = run_dirs["ck"]
    cases = [
        (["--runs", str(tmp_path / "nope")], "run folder not found"),
        (["--runs", ck, ck], "two runs are named 'ck8'"),
        (["--runs", ck, "data.root=x"], "cannot be set by compare"),
        (["--runs", ck, "--methods", "nosuch"], "nosuch"),
    ]
    for extra, message in cases:
        assert main(["compare", "--out", str(tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    # names given by hand tell two runs of one dataset apart
    assert main(["-q", "compare", "--runs", f"a={ck}", f"b={ck}", "--out", str(tmp_path / "two"),
                 "--methods", "gradcam", "--smoke"]) == 0
    table = pd.read_csv(tmp_path / "two" / "transfer.csv")
    assert table["accuracy"].nunique() == 1  # the same model on the same faces, four times


def test_a_comparison_of_face_datasets_shows_where_each_model_looks_per_shared_class(runs, tmp_path):
    _, run_dirs = runs
    out = tmp_path / "faces"
    assert main(["-q", "compare", "--runs", run_dirs["ck"], run_dirs["fer2013"], run_dirs["ferplus"], "--out",
                 str(out), "--methods", "gradcam", "--smoke"]) == 0
    regions = pd.read_csv(out / "regions.csv")
    assert set(regions["dataset"]) == {"ck8", "fer2013s", "ferpluss"} and set(regions["source"]) == {"landmarks"}
    assert set(regions["class"]) <= {"happiness", "surprise", "sadness", "anger", "disgust", "fear"}
    assert regions.groupby(["dataset", "class"])["share"].sum().round(6).eq(1).all()
    assert (out / "regions_gradcam.png").stat().st_size > 5000
    page = Elements((out / "index.html").read_text())
    assert page.having(data_section="comparison-regions") and page.having("img", src="regions_gradcam.png")


def test_the_same_model_agrees_with_itself_on_every_face(runs):
    """Known answers: identical maps correlate 1 and share their top pixels; disjoint tops overlap 0."""
    import torch

    from xai_lab.data.dataset import load_dataset
    from xai_lab.evaluate import load_run
    from xai_lab.explain.agreement import cross_explanations, top_overlap

    a = torch.zeros(1, 10, 10)
    a[0, :2] = 1.0  # the top 20%: the first two rows
    assert top_overlap(a, a).item() == 1.0 and top_overlap(a, a.flip(1)).item() == 0.0
    _, run_dirs = runs
    run = load_run(run_dirs["fer2013"], "cpu")
    data = load_dataset(run.cfg.data)
    table = cross_explanations({"x": run, "y": run}, {"x": data}, "gradcam", {}, "", n_faces=6)
    assert list(table["faces_of"]) == ["x"] and list(table["model"]) == ["y"]
    assert table["n"].item() + table["n_blank"].item() == 6 and table["n"].item() > 0  # blank Grad-CAMs left out
    assert table["spearman"].item() == pytest.approx(1.0) and table["top20_iou"].item() == pytest.approx(1.0)
    own = table.filter(like="own_share_").to_numpy()
    assert np.allclose(own, table.filter(regex="^share_").to_numpy())  # the same maps, the same shares
