"""write_confusion_matrix: CSV contents and a readable PNG."""
import csv

import matplotlib.image
import pytest
import torch

from deepres.eval import write_confusion_matrix


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_confusion_files(tmp_path):
    confusion = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 0, 5]])
    paths = write_confusion_matrix(confusion, ["cat", "dog", "bird"], tmp_path / "out")
    rows = read_csv(paths["confusion_csv"])
    assert rows[0][1:] == ["cat", "dog", "bird"]
    assert [r[0] for r in rows[1:]] == ["cat", "dog", "bird"]
    assert [[int(v) for v in r[1:]] for r in rows[1:]] == confusion.tolist()
    per_class = read_csv(paths["per_class_csv"])
    assert per_class[0] == ["class", "images", "correct", "accuracy_percent"]
    assert per_class[1][:3] == ["cat", "4", "3"] and float(per_class[1][3]) == pytest.approx(75.0)
    assert per_class[2] == ["dog", "0", "0", "nan"]
    assert float(per_class[3][3]) == pytest.approx(100 * 5 / 7, abs=1e-3)
    png = paths["confusion_png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(paths["confusion_png"])
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200


def test_many_classes_without_names(tmp_path):
    confusion = torch.eye(120, dtype=torch.int64) * 2
    paths = write_confusion_matrix(confusion, None, tmp_path)
    rows = read_csv(paths["confusion_csv"])
    assert rows[0][1] == "0" and rows[0][-1] == "119" and len(rows) == 121
    assert matplotlib.image.imread(paths["confusion_png"]).shape[0] > 200


def test_bad_confusion_inputs(tmp_path):
    with pytest.raises(ValueError, match="square"):
        write_confusion_matrix(torch.zeros(2, 3, dtype=torch.int64), None, tmp_path)
    with pytest.raises(ValueError, match="class_names"):
        write_confusion_matrix(torch.zeros(2, 2, dtype=torch.int64), ["a"], tmp_path)
