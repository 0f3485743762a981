import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from xai_lab.evaluate import classification_summary
from xai_lab.explain.explainers import explain_batched
from xai_lab.explain.selection import select_confident


def test_summary_equals_sklearn_on_a_known_confusion():
    # 3 classes; confusion rows (true) x cols (pred): [[3,1,0],[0,2,2],[1,0,1]]
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 1, 2, 2, 0, 2])
    s = classification_summary(y_true, y_pred, ["a", "b", "c"])
    assert s["accuracy"] == pytest.approx(0.6) == accuracy_score(y_true, y_pred)
    # per class: a P=3/4 R=3/4; b P=2/3 R=2/4; c P=1/3 R=1/2
    f1 = [0.75, 2 * (2 / 3) * 0.5 / (2 / 3 + 0.5), 2 * (1 / 3) * 0.5 / (1 / 3 + 0.5)]
    assert s["macro_f1"] == pytest.approx(np.mean(f1)) == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    p, r, f, sup = precision_recall_fscore_support(y_true, y_pred)
    for i, name in enumerate("abc"):
        assert s["per_class"][name] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i],
                                                       "support": sup[i]})
    assert s["n"] == 10 and s["class_names"] == ["a", "b", "c"]


def test_a_class_never_seen_counts_as_zero_f1():
    s = classification_summary(np.array([0, 0]), np.array([0, 0]), ["a", "b"])
    assert s["macro_f1"] == pytest.approx(0.5)
    assert s["per_class"]["b"]["support"] == 0


class Linear(nn.Module):
    """logits = W x: the gradient of logit c with respect to x is W[c]."""

    def __init__(self, h=6, w=5, k=3):
        super().__init__()
        self.fc = nn.Linear(h * w, k, bias=True)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_saliency_of_a_linear_model_is_its_weights():
    torch.manual_seed(0)
    model = Linear().eval()
    x = torch.rand(4, 1, 6, 5)
    target = torch.tensor([0, 1, 2, 1])
    maps = explain_batched("saliency", model, x, target, batch_size=3)
    expected = model.fc.weight.detach()[target].abs().view(4, 6, 5)
    assert maps.shape == (4, 6, 5)
    assert torch.allclose(maps, expected, atol=1e-6)


def test_select_confident_orders_by_top_probability():
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8], [0.5, 0.5]])
    chosen = select_confident(probs, 2)
    assert chosen["high_conf"].tolist() == [0, 2]
    assert chosen["low_conf"].tolist() == [3, 1]
