"""ImageNet-C / ImageNet-P metrics against hand-computed values, the published AlexNet tables, and the report files
(robustness.md / .csv / .json / _severity.png, the example grid) read back."""
import csv
import json

import pytest
import torch
from PIL import Image

from deepres.eval.robustness import (ALEXNET, ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, ALEXNET_EXTRA_MEAN_ERRORS,
                                     ALEXNET_FLIP_PROBABILITIES, ALEXNET_TOP5_DISTANCES, CORRUPTIONS,
                                     EXTRA_PERTURBATIONS, PERTURBATIONS, Baseline, RobustnessReport,
                                     baseline_from_report, corruption_error, flip_probability, flip_rate,
                                     mean_corruption_error, mean_flip_rate, read_report, relative_corruption_error,
                                     relative_mean_corruption_error, top5_distance, write_example_grid,
                                     write_report)

# A toy table. Sums over severities 1..5:
#   model    fog 0.1+0.2+0.3+0.4+0.5 = 1.5    snow 5 x 0.2 = 1.0    clean 0.05
#   baseline fog 0.3+0.4+0.5+0.6+0.7 = 2.5    snow 5 x 0.4 = 2.0    clean 0.20
ERRORS = {"fog": {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4, 5: 0.5}, "snow": {s: 0.2 for s in range(1, 6)}}
BASELINE = {"fog": {1: 0.3, 2: 0.4, 3: 0.5, 4: 0.6, 5: 0.7}, "snow": {s: 0.4 for s in range(1, 6)}}


def test_corruption_error_by_hand():
    assert corruption_error(ERRORS["fog"], BASELINE["fog"]) == pytest.approx(0.6)  # 1.5 / 2.5
    assert corruption_error(ERRORS["snow"], BASELINE["snow"]) == pytest.approx(0.5)  # 1.0 / 2.0
    assert corruption_error(ERRORS["fog"], 0.5) == pytest.approx(0.6)  # a baseline given as its mean: 5 x 0.5
    # mCE = (0.6 + 0.5) / 2
    assert mean_corruption_error(ERRORS, BASELINE, corruptions=["fog", "snow"]) == pytest.approx(0.55)


def test_relative_corruption_error_by_hand():
    # fog: (1.5 - 5 x 0.05) / (2.5 - 5 x 0.2) = 1.25 / 1.5;  snow: (1.0 - 0.25) / (2.0 - 1.0) = 0.75
    assert relative_corruption_error(ERRORS["fog"], 0.05, BASELINE["fog"], 0.2) == pytest.approx(1.25 / 1.5)
    assert relative_corruption_error(ERRORS["snow"], 0.05, BASELINE["snow"], 0.2) == pytest.approx(0.75)
    rel = relative_mean_corruption_error(ERRORS, 0.05, BASELINE, 0.2, corruptions=["fog", "snow"])
    assert rel == pytest.approx((1.25 / 1.5 + 0.75) / 2)


def test_corruption_error_against_alexnet():
    # Half AlexNet's mean gaussian_noise error (0.886428, AugMix's ALEXNET_ERR) at every severity: CE 0.5.
    assert corruption_error({s: 0.443214 for s in range(1, 6)}, ALEXNET.errors["gaussian_noise"]) == \
        pytest.approx(0.5)
    # AlexNet against itself: mCE and relative mCE are 1 (100%, the paper's AlexNet row).
    own = {c: ALEXNET.errors[c] for c in CORRUPTIONS}
    assert mean_corruption_error(own, ALEXNET.errors) == pytest.approx(1.0)
    assert relative_mean_corruption_error(own, ALEXNET_CLEAN_ERROR, ALEXNET.errors, ALEXNET_CLEAN_ERROR) == \
        pytest.approx(1.0)


def test_alexnet_tables_match_their_sources():
    # AugMix's ALEXNET_ERR (google-research/augmix imagenet.py): the per-corruption means of the severity table.
    augmix = [0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360, 0.866816, 0.826572, 0.819324,
              0.564592, 0.853204, 0.646056, 0.717840, 0.606500]
    assert list(ALEXNET_ERRORS) == list(CORRUPTIONS)
    assert [sum(row) / 5 for row in ALEXNET_ERRORS.values()] == pytest.approx(augmix, abs=1e-9)
    assert set(ALEXNET.errors) == set(CORRUPTIONS) | set(ALEXNET_EXTRA_MEAN_ERRORS)
    assert set(ALEXNET_FLIP_PROBABILITIES) == set(ALEXNET_TOP5_DISTANCES) == set(PERTURBATIONS + EXTRA_PERTURBATIONS)
    assert ALEXNET_CLEAN_ERROR == pytest.approx(0.435, abs=5e-4)  # the paper's 43.5


def test_bad_error_tables_name_what_is_wrong():
    with pytest.raises(ValueError, match="severity 3"):
        corruption_error({1: 0.1, 2: 0.1, 4: 0.1, 5: 0.1}, BASELINE["fog"])
    with pytest.raises(ValueError, match="'fog'"):
        mean_corruption_error({"snow": ERRORS["snow"]}, BASELINE, corruptions=["snow", "fog"])
    with pytest.raises(ValueError, match="baseline.*'frost'"):
        mean_corruption_error({**ERRORS, "frost": ERRORS["snow"]}, BASELINE, corruptions=["frost"])
    with pytest.raises(ValueError, match="percentage"):
        corruption_error({s: 45.0 for s in range(1, 6)}, BASELINE["fog"])


def test_flip_probability_noise_and_consecutive():
    predictions = torch.tensor([[1, 2, 2, 2, 2], [3, 3, 3, 3, 3]])
    # noise: frames 1..4 against frame 0: sequence 0 flips 4/4, sequence 1 0/4 -> (1 + 0) / 2
    assert flip_probability(predictions, noise=True) == pytest.approx(0.5)
    # consecutive: sequence 0 flips only 1->2 (1/4), sequence 1 never -> (0.25 + 0) / 2
    assert flip_probability(predictions, noise=False) == pytest.approx(0.125)
    alternating = torch.tensor([[1, 2, 1, 2, 1]])
    assert flip_probability(alternating, noise=False) == pytest.approx(1.0)  # 4 flips in 4 pairs
    # difficulty 2: frame t against t - 2: (0,2), (1,3), (2,4) all agree
    assert flip_probability(alternating, noise=False, difficulty=2) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="frames"):
        flip_probability(torch.tensor([1, 2, 3]), noise=False)


def test_top5_distance_by_hand():
    k = 7
    a = -torch.arange(k, dtype=torch.float)  # ranking 0 1 2 3 4 5 6
    b = a.clone()
    b[[0, 1]] = b[[1, 0]]  # ranking 1 0 2 3 4 5 6
    c = a.clone()
    c[0] = -100.0  # ranking 1 2 3 4 5 6 0
    sequence = torch.stack([a, b, c])[None]
    # a->b: ranks in b of a's top 5 (0..4) are 1 0 2 3 4: |0-1| + |1-0| = 2
    # a->c: ranks in c of 0..4 are 6(->5) 0 1 2 3: 5 + 1 + 1 + 1 + 1 = 9
    # b->c: ranks in c of b's top 5 (1 0 2 3 4) are 0 6(->5) 1 2 3: 0 + 4 + 1 + 1 + 1 = 7
    assert top5_distance(sequence, noise=True) == pytest.approx((2 + 9) / 2)
    assert top5_distance(sequence, noise=False) == pytest.approx((2 + 7) / 2)
    ties = torch.zeros(1, 3, k)  # all tied: ranked by class index in every frame, so nothing moves
    assert top5_distance(ties, noise=False) == 0.0


def test_flip_rates():
    assert flip_rate(0.1, 0.2) == pytest.approx(0.5)
    # FR a = 0.1 / 0.2 = 0.5, FR b = 0.15 / 0.1 = 1.5 -> mFR 1.0
    assert mean_flip_rate({"a": 0.1, "b": 0.15}, {"a": 0.2, "b": 0.1}, perturbations=["a", "b"]) == \
        pytest.approx(1.0)
    half = {p: ALEXNET_FLIP_PROBABILITIES[p] / 2 for p in PERTURBATIONS}
    assert mean_flip_rate(half, ALEXNET.flip_probabilities) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="'gaussian_noise'"):
        mean_flip_rate({"translate": 0.1}, ALEXNET.flip_probabilities)


def _toy_report():
    # contrast has only severities 1 and 2: listed in the table and CSV, left out of CE and mCE.
    errors = {**ERRORS, "contrast": {1: 0.3, 2: 0.35}}
    baseline = Baseline("toy baseline", {**BASELINE, "contrast": 0.6}, clean_error=0.2,
                        flip_probabilities={"translate": 0.2}, top5_distances={"translate": 2.0})
    return RobustnessReport(model="resnet20", clean_error=0.05, errors=errors, baseline=baseline,
                            flip_probabilities={"translate": 0.1}, top5_distances={"translate": 1.5},
                            dataset="corrupt() on a toy test set", images=24, perturbation_images=24)


def test_report_files_hold_the_numbers(tmp_path):
    report = _toy_report()
    paths = write_report(report, tmp_path / "out")
    with open(paths["robustness.csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 + 5 + 2
    by_key = {(r["corruption"], int(r["severity"])): float(r["error_percent"]) for r in rows}
    assert by_key[("fog", 4)] == 40.0 and by_key[("contrast", 2)] == 35.0
    data = json.loads(paths["robustness.json"].read_text())
    assert data["corruption_errors"] == {"fog": 60.0, "snow": 50.0}
    summary = data["summary"]
    assert summary["mce_evaluated"] == 55.0 and summary["mce_15"] is None
    assert summary["relative_mce_evaluated"] == round(100 * (1.25 / 1.5 + 0.75) / 2, 3)
    assert data["flip_rates"] == {"translate": 50.0}  # 0.1 / 0.2
    assert data["top5_distance_ratios"] == {"translate": 75.0}  # 1.5 / 2.0
    markdown = paths["robustness.md"].read_text()
    assert "Baseline: **toy baseline**" in markdown
    assert "| fog | 10.00 | 20.00 | 30.00 | 40.00 | 50.00 | 30.00 | 60.0 | 83.3 |" in markdown
    assert "not comparable" in markdown
    with Image.open(paths["robustness_severity.png"]) as png:
        assert png.format == "PNG" and png.size[0] > 100
    assert read_report(tmp_path / "out") == report  # the JSON round-trips


def test_every_file_is_in_percent_rounded(tmp_path):
    """One unit in the .md, .csv and .json: percent (T5D in rank positions), rounded to 3 decimals in the files that
    programs read (exact for counts out of 50,000 images), as the .md shows them to people."""
    third = 1 / 3
    report = RobustnessReport(model="m", clean_error=0.1, errors={"fog": {s: third for s in range(1, 6)}},
                              baseline=Baseline("b", {"fog": 0.7}, clean_error=0.3), images=3)
    paths = write_report(report, tmp_path)
    data = json.loads(paths["robustness.json"].read_text())
    assert data["units"].startswith("percent")
    assert data["clean_error"] == 10.0 and data["errors"]["fog"]["3"] == 33.333
    assert data["corruption_errors"]["fog"] == round(100 * third / 0.7, 3)  # 47.619
    assert data["baseline"]["errors"]["fog"] == 70.0 and data["baseline"]["clean_error"] == 30.0
    assert data["summary"]["corruption_error"] == 33.333 and data["summary"]["mce_evaluated"] == 47.619
    assert "33.333" in paths["robustness.csv"].read_text().splitlines()[1]
    markdown = paths["robustness.md"].read_text()
    assert "| fog | 33.33 | 33.33 | 33.33 | 33.33 | 33.33 | 33.33 | 47.6 |" in markdown
    assert "- clean error: 10.00" in markdown and "- corruption error" in markdown
    assert read_report(tmp_path).errors["fog"][3] == pytest.approx(third, abs=5e-6)  # back to fractions


def test_without_a_baseline_the_summary_still_gives_the_corruption_error(tmp_path):
    errors = {"contrast": {1: 0.2, 2: 0.4}, "fog": {s: 0.1 * s for s in range(1, 6)}}
    report = RobustnessReport(model="m", clean_error=0.05, errors=errors, baseline=Baseline("none", {}))
    summary = report.summary()
    assert summary["corruption_error"] == pytest.approx((0.2 + 0.4 + 1.5) / 7)  # the mean over every cell run
    assert summary["corruptions_evaluated"] == ["fog", "contrast"]  # what ran, in Hendrycks' order
    assert summary["corruptions_with_ce"] == [] and summary["mce_evaluated"] is None
    assert summary["corruption_error_15"] is None  # 2 of the 15, one with 2 severities
    markdown = write_report(report, tmp_path)["robustness.md"].read_text()
    assert "- corruption error (mean top-1 error over the 7 corruption × severity cells run): 30.00" in markdown
    assert "mCE: – (no CE: the baseline has none of these corruptions)" in markdown
    full = {c: {s: 0.5 for s in range(1, 6)} for c in CORRUPTIONS}
    assert RobustnessReport(model="m", clean_error=None, errors=full).summary()["corruption_error_15"] == 0.5


def test_a_run_baseline_must_have_measured_the_same_images_and_severities(tmp_path):
    from deepres.eval.robustness import check_comparable
    write_report(RobustnessReport(model="resnet20", clean_error=0.05, errors=ERRORS, baseline=Baseline("b", {}),
                                  images=1000), tmp_path / "a")
    baseline = baseline_from_report(tmp_path / "a")
    assert (baseline.images, baseline.severities) == (1000, (1, 2, 3, 4, 5))
    check_comparable(baseline, images=1000, severities=[5, 4, 3, 2, 1])  # same images and severities: fine
    with pytest.raises(ValueError, match=r"resnet20 .* was measured on 1000 images at severities 1-5, this run on "
                                         r"24 images at severities 1-5"):
        check_comparable(baseline, images=24, severities=range(1, 6))
    with pytest.raises(ValueError, match=r"1000 images at severities 1-5, this run on 1000 images at severities 1,3"):
        check_comparable(baseline, images=1000, severities=[1, 3])
    check_comparable(ALEXNET, images=24, severities=[1])  # published numbers: ImageNet-C's images, not checked


def test_an_old_report_is_refused_as_a_baseline_by_name(tmp_path):
    (tmp_path / "robustness.json").write_text(json.dumps({"version": 1, "model": "m", "errors": {}}))
    with pytest.raises(ValueError, match=r"robustness.json: .*version 1.*rerun `deepres robustness`"):
        baseline_from_report(tmp_path)


def test_report_against_alexnet_names_it_and_gives_mce(tmp_path):
    errors = {c: dict(ALEXNET.errors[c]) for c in CORRUPTIONS}
    report = RobustnessReport(model="alexnet", clean_error=ALEXNET_CLEAN_ERROR, errors=errors)
    summary = report.summary()
    assert summary["mce_15"] == pytest.approx(1.0) and summary["relative_mce_15"] == pytest.approx(1.0)
    assert summary["mce_19"] is None  # the 4 extra corruptions were not evaluated
    markdown = write_report(report, tmp_path)["robustness.md"].read_text()
    assert "Baseline: **AlexNet (Hendrycks & Dietterich 2019)**" in markdown
    assert "- mCE (15 corruptions): 100.0" in markdown
    assert json.loads((tmp_path / "robustness.json").read_text())["summary"]["mce_15"] == 100.0


def test_baseline_from_a_previous_report(tmp_path):
    write_report(_toy_report(), tmp_path / "run_a")
    baseline = baseline_from_report(tmp_path / "run_a")
    assert "resnet20" in baseline.name and "run_a" in baseline.name
    # Against run A itself halved: fog 0.75 / 1.5 = 0.5, snow 0.5 / 1.0 = 0.5
    halved = {c: {s: e / 2 for s, e in ERRORS[c].items()} for c in ERRORS}
    report = RobustnessReport(model="resnet56", clean_error=0.04, errors=halved, baseline=baseline, images=24)
    assert report.corruption_errors() == pytest.approx({"fog": 0.5, "snow": 0.5})
    assert (baseline.images, baseline.severities, baseline.perturbation_images) == (24, (1, 2, 3, 4, 5), 24)
    assert f"Baseline: **{baseline.name}**" in write_report(report, tmp_path / "run_b")["robustness.md"].read_text()
    with pytest.raises(FileNotFoundError, match="robustness.json"):
        baseline_from_report(tmp_path / "nowhere")


def test_example_grid_size_and_pixels(tmp_path):
    images = {("fog", s): torch.full((1, 28, 28), 40 * s, dtype=torch.uint8) for s in range(1, 6)}
    images[("snow", 1)] = torch.zeros(1, 28, 28, dtype=torch.uint8)
    clean = torch.full((1, 28, 28), 255, dtype=torch.uint8)
    path = write_example_grid(images, tmp_path / "grid.png", clean=clean)
    # 28 px enlarged x4 (ceil(96 / 28)) = 112 px cells, 4 px apart; columns clean + 5 severities, rows snow, fog
    # (Hendrycks' order): width 120 (labels) + 6 x (112 + 4) + 4 = 820, height 20 (titles) + 2 x (112 + 4) + 4 = 256
    with Image.open(path) as grid:
        assert grid.size == (820, 256)
        # fog severity 1 (second column, second row): x from 120 + 4 + 116 = 240, y from 20 + 4 + 116 = 140
        assert grid.getpixel((240 + 56, 140 + 56)) == (40, 40, 40)
        assert grid.getpixel((240 + 56, 24 + 56)) == (0, 0, 0)  # snow severity 1
        assert grid.getpixel((124 + 56, 24 + 56)) == (255, 255, 255)  # the clean image, first column
    with pytest.raises(ValueError, match="snow"):
        write_example_grid({**images, ("snow", 2): torch.zeros(1, 30, 30, dtype=torch.uint8)}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="uint8"):
        write_example_grid({("fog", 1): torch.zeros(1, 28, 28)}, tmp_path / "x.png")
