"""`deepres robustness` and `deepres data make-corrupted` end to end on a tiny trained run: errors equal a hand
evaluation of corrupt()'s images, the report files, baselines, perturbations, ImageNet-C folders, bad options."""
import json

import pytest
import torch

from deepres.cli import main
from deepres.core.config import Config, DataConfig, ModelConfig, RunConfig, TrainConfig
from deepres.data import build_eval_dataset, imagenet_c_contents
from deepres.data.corruptions import corrupt
from deepres.tasks.build import load_model
from deepres.train.loop import fit

DATA = DataConfig(name="synthetic", synthetic_size=(512, 24), synthetic_image_size=16, batch_size=32,
                  eval_batch_size=10)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("robust")
    cfg = Config(model=ModelConfig(name="resnet20", kwargs={"layers": (1, 1, 1)}), data=DATA,
                 train=TrainConfig(epochs=4, progress=False), run=RunConfig(out_dir=str(out), name="tiny"))
    fit(cfg, device="cpu", log=lambda _: None)
    return out / "tiny"


def test_errors_are_the_models_on_corrupt_images_seeded_by_index(run_dir):
    assert main(["robustness", str(run_dir), "--corruptions", "gaussian_noise,contrast", "--severities", "1-5"]) == 0
    report = json.loads((run_dir / "robustness" / "robustness.json").read_text())
    assert set(report["errors"]) == {"gaussian_noise", "contrast"}
    assert report["clean_error"] < 20 < report["errors"]["contrast"]["5"]  # percent: it learned; contrast 5 hurts
    # by hand: the 24 test images, corrupted in one batch with their indices, through the eval transform
    loaded = load_model(run_dir)
    images = build_eval_dataset(DATA).images
    mean, std = torch.tensor(DATA.mean).view(1, -1, 1, 1), torch.tensor(DATA.std).view(1, -1, 1, 1)
    labels = build_eval_dataset(DATA).labels
    for name in ("gaussian_noise", "contrast"):
        x = corrupt(images, name, 3, seed=0, indices=torch.arange(24)).float() / 255
        with torch.no_grad():
            error = (loaded.model.eval()((x - mean) / std).argmax(1) != labels).float().mean().item()
        assert report["errors"][name]["3"] == pytest.approx(100 * error, abs=1e-3)  # percent, 3 decimals
    for name in ("robustness.md", "robustness.csv", "robustness_severity.png", "examples.png"):
        assert (run_dir / "robustness" / name).stat().st_size > 0
    assert "none" in (run_dir / "robustness" / "robustness.md").read_text()  # no baseline, said so
    assert main(["robustness", str(run_dir), "--corruptions", "contrast"]) == 2  # the report is there: no overwrite


def test_a_run_as_baseline_gives_ce_one_against_itself(run_dir, tmp_path):
    base, out = tmp_path / "base", tmp_path / "again"
    args = ["robustness", str(run_dir), "--corruptions", "gaussian_noise,contrast"]
    assert main([*args, "--out", str(base)]) == 0
    assert main([*args, "--baseline", str(base), "--out", str(out)]) == 0
    report = json.loads((out / "robustness.json").read_text())
    assert str(base) in (out / "robustness.md").read_text()  # the baseline is named
    summary = report["summary"]
    assert summary["mce_evaluated"] == 100.0 and summary["mce_15"] is None  # only 2 of the 15, in percent
    assert summary["relative_mce_evaluated"] == 100.0


def test_without_a_baseline_the_summary_gives_the_corruption_error(run_dir, tmp_path, capsys):
    out = tmp_path / "plain"
    assert main(["robustness", str(run_dir), "--corruptions", "contrast,gaussian_noise", "--severities", "1,5",
                 "--out", str(out)]) == 0
    report = json.loads((out / "robustness.json").read_text())
    summary, errors = report["summary"], report["errors"]
    assert summary["corruptions_evaluated"] == ["gaussian_noise", "contrast"] and summary["mce_evaluated"] is None
    cells = [e for by_severity in errors.values() for e in by_severity.values()]
    assert summary["corruption_error"] == pytest.approx(sum(cells) / 4, abs=1e-3)  # percent, as the errors
    assert f"corruption_error: {summary['corruption_error']:.1f}%" in capsys.readouterr().out


def test_a_baseline_run_on_other_images_or_severities_is_refused(run_dir, tmp_path, capsys):
    base = tmp_path / "base"
    assert main(["robustness", str(run_dir), "--corruptions", "contrast", "--set", "data.limit_val=12",
                 "--out", str(base)]) == 0
    capsys.readouterr()
    for extra, now in ((["--set", "data.limit_val=12", "--severities", "1,2"], "12 images at severities 1,2"),
                       ([], "24 images at severities 1-5")):
        out = tmp_path / "x"
        assert main(["robustness", str(run_dir), "--corruptions", "contrast", "--baseline", str(base), *extra,
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"measured on 12 images at severities 1-5, this run on {now}" in err
        assert not (out / "robustness.json").exists()


def test_alexnet_is_refused_as_the_baseline_of_a_model_that_is_not_an_imagenet_classifier(run_dir, tmp_path,
                                                                                          capsys):
    assert main(["robustness", str(run_dir), "--corruptions", "contrast", "--baseline", "alexnet",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--baseline alexnet" in err and "ImageNet-1k" in err and "10 classes" in err


def test_perturbation_flip_probabilities(run_dir, tmp_path):
    out = tmp_path / "p"
    assert main(["robustness", str(run_dir), "--corruptions", "brightness", "--severities", "1",
                 "--perturbations", "translate,gaussian_noise", "--perturbation-images", "6", "--frames", "4",
                 "--out", str(out)]) == 0
    report = json.loads((out / "robustness.json").read_text())
    assert set(report["flip_probabilities"]) == {"translate", "gaussian_noise"}
    assert all(0.0 <= fp <= 100.0 for fp in report["flip_probabilities"].values())  # percent


@pytest.mark.parametrize("option, value, message", [
    ("--corruptions", "snowfall", "snowfall"), ("--severities", "0-3", "severities"),
    ("--perturbations", "zoom", "zoom"), ("--baseline", "/nonexistent", "robustness.json")])
def test_bad_options_are_named(run_dir, tmp_path, capsys, option, value, message):
    assert main(["robustness", str(run_dir), option, value, "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err


def test_make_corrupted_writes_imagenet_c_that_robustness_reads(tmp_path, run_dir):
    out = tmp_path / "synthetic-c"
    args = ["data", "make-corrupted", "-", str(out), "--dataset", "synthetic", "--corruptions", "fog,pixelate",
            "--severities", "2,4", "--set", "synthetic_size=[512, 24]", "--set", "synthetic_image_size=16",
            "--quiet"]
    assert main(args) == 0
    assert imagenet_c_contents(out) == {"fog": [2, 4], "pixelate": [2, 4]}
    assert len(list((out / "fog" / "2").rglob("*.JPEG"))) == 24
    assert main(args) == 2  # OUT exists: nothing is written over
    report_dir = tmp_path / "report"
    assert main(["robustness", str(run_dir), "--imagenet-c", str(out), "--corruptions", "all",
                 "--out", str(report_dir)]) == 0
    report = json.loads((report_dir / "robustness.json").read_text())
    assert {c: sorted(map(int, e)) for c, e in report["errors"].items()} == {"fog": [2, 4], "pixelate": [2, 4]}


def test_imagenet_weights_read_an_imagenet_c_folder_by_synset(tmp_path):
    import numpy as np
    from PIL import Image

    from deepres.data.imagenet_classes import imagenet_synsets
    root = tmp_path / "ImageNet-C"
    for severity in (1, 5):
        for wnid in imagenet_synsets()[:2]:  # what Hendrycks' archives hold: wnid folders of 224x224 JPEGs
            folder = root / "fog" / str(severity) / wnid
            folder.mkdir(parents=True)
            Image.fromarray(np.full((224, 224, 3), 40 * severity, np.uint8)).save(folder / "a.JPEG")
    out = tmp_path / "report"
    assert main(["robustness", "resnet18", "--imagenet-c", str(root), "--out", str(out)]) == 0
    report = json.loads((out / "robustness.json").read_text())
    assert report["baseline"]["name"].startswith("AlexNet") and set(report["errors"]["fog"]) == {"1", "5"}
