"""`deepres study` and `deepres compare`: statistics checked against the runs' own metrics.jsonl, the report
files, resume without redoing finished runs, --parallel, divergence as a result, and study-file errors."""
import csv
import json
import shutil
import statistics

import matplotlib.image
import pytest
import yaml
from train_fakes import TINY_MODEL, TinyNet

from deepres.cli import main
from deepres.core.runs import lock_run_dir
from deepres.data import DataConfig, build_loaders
from deepres.studies import load_study, plan_study, run_state, run_study
from deepres.studies.report import input_side, read_robustness
from deepres.studies.runner import DIVERGED_FILE, _set_aside
from deepres.train.loop import fit

SHIPPED = ["block_variants", "solvers", "bn_momentum", "depth"]


def write_recipe(directory, model=TINY_MODEL, epochs=2):
    path = directory / "tiny.yaml"
    path.write_text(f"""
model: {{name: {model}}}
data: {{name: synthetic, synthetic_size: [64, 32], synthetic_image_size: 8, batch_size: 16, eval_batch_size: 32}}
optim: {{lr: 0.1}}
schedule: {{name: cosine}}
train: {{epochs: {epochs}, log_every_iters: 2}}
""")
    return path


def write_study(directory, text):
    path = directory / "study.yaml"
    path.write_text(text)
    return path


TINY_STUDY = """
base: tiny.yaml
description: width of the tiny net
seeds: [0, 1]
overrides: [train.epochs=1]
variants:
  narrow: [model.kwargs.width=4]
  wide: {model.kwargs.width: 8}
  diverges: [optim.lr=.inf, train.nonfinite_patience=1]
report: {best_epoch: true}
"""


def final_error(run_dir):
    """100 - top-1 of the last epoch record, read straight from metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return 100.0 - [r for r in records if r["kind"] == "epoch"][-1]["top1"]


def read_csv(path):
    with open(path, newline="") as f:
        return {row["variant"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """The tiny study (3 variants x 2 seeds), run once through the CLI: (study folder, study file)."""
    directory = tmp_path_factory.mktemp("study")
    write_recipe(directory)
    study = write_study(directory, TINY_STUDY)
    out = directory / "out"
    assert main(["study", str(study), "--out", str(out)]) == 0
    return out, study


def test_study_report_statistics_and_files(tiny_study):
    out, study = tiny_study
    rows = read_csv(out / "report" / "results.csv")
    assert list(rows) == ["narrow", "wide", "diverges"]  # the study's order
    for variant, width in (("narrow", 4), ("wide", 8)):
        errors = [final_error(out / variant / f"seed{s}") for s in (0, 1)]
        row = rows[variant]
        assert row["n"] == "2"
        assert float(row["top1_error_mean"]) == pytest.approx(statistics.mean(errors), abs=1e-4)
        assert float(row["top1_error_std"]) == pytest.approx(statistics.stdev(errors), abs=1e-4)  # ddof=1
        assert float(row["top1_error_min"]) == pytest.approx(min(errors), abs=1e-4)
        assert float(row["top1_error_max"]) == pytest.approx(max(errors), abs=1e-4)
        assert row["top1_errors"] == ";".join(f"{s}:{e:.4f}" for s, e in zip((0, 1), errors))
        assert int(row["params"]) == sum(p.numel() for p in TinyNet(10, 3, width=width).parameters())
        assert float(row["gmacs"]) > 0 and row["epochs"] == "1"
        total_time = [sum(json.loads(line).get("epoch_time_s", 0.0) for line in
                          (out / variant / f"seed{s}" / "metrics.jsonl").read_text().splitlines()) for s in (0, 1)]
        assert float(row["train_time_s"]) == pytest.approx(statistics.mean(total_time), abs=0.06)
        last_losses = [[json.loads(line) for line in (out / variant / f"seed{s}" / "metrics.jsonl").read_text()
                        .splitlines() if json.loads(line)["kind"] == "epoch"][-1]["train_loss"] for s in (0, 1)]
        assert float(row["train_loss_mean"]) == pytest.approx(statistics.mean(last_losses), abs=1e-4)
        assert float(row["train_loss_std"]) == pytest.approx(statistics.stdev(last_losses), abs=1e-4)
    # the diverged runs are reported, and kept out of the statistics
    assert rows["diverges"]["n"] == "0" and rows["diverges"]["top1_error_mean"] == ""
    assert rows["diverges"]["left_out"] == "2 diverged"
    assert (out / "diverges" / "seed0" / DIVERGED_FILE).is_file()
    runs = list(csv.DictReader(open(out / "report" / "runs.csv", newline="")))
    assert [(r["variant"], r["seed"], r["status"]) for r in runs] == [
        ("narrow", "0", "finished"), ("narrow", "1", "finished"), ("wide", "0", "finished"),
        ("wide", "1", "finished"), ("diverges", "0", "diverged"), ("diverges", "1", "diverged")]

    md = (out / "report" / "results.md").read_text()
    mean, std = float(rows["wide"]["top1_error_mean"]), float(rows["wide"]["top1_error_std"])
    assert f"| wide | 2 | {mean:.2f} ± {std:.2f} |" in md
    assert "ddof=1" in md and "not the best epoch" in md and "optimistic" in md and "![" in md

    png = out / "report" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(png).shape[2] in (3, 4)
    page = (out / "report" / "report.html").read_text()
    assert "<table>" in page and "<td>wide</td>" in page and "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page

    stored = yaml.safe_load((out / "study.yaml").read_text())
    assert stored["seeds"] == [0, 1] and list(stored["variants"]) == ["narrow", "wide", "diverges"]
    assert stored["base"].endswith("tiny.yaml")


def test_rerun_from_stored_study_skips_finished_and_diverged_runs(tiny_study, capsys):
    out, _ = tiny_study
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "report" not in p.parts}
    assert main(["study", str(out / "study.yaml"), "--out", str(out)]) == 0  # the resolved copy continues it
    printed = capsys.readouterr().out
    assert printed.count("finished earlier: skipped") == 4 and printed.count("diverged earlier") == 2
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_runs_made_before_a_config_key_existed_still_count(tiny_study, tmp_path, capsys):
    out, _ = tiny_study
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    stored = copy / "narrow" / "seed0" / "config.yaml"
    config = yaml.safe_load(stored.read_text())
    del config["data"]["keep_classes"], config["optim"]["layer_decay"]  # keys newer than the run, at their defaults
    stored.write_text(yaml.safe_dump(config))
    assert main(["study", str(copy / "study.yaml"), "--out", str(copy)]) == 0
    assert capsys.readouterr().out.count("finished earlier: skipped") == 4


def test_compare_groups_by_config_or_parent(tiny_study, tmp_path, capsys):
    out, _ = tiny_study
    runs = [str(out / v / f"seed{s}") for v in ("narrow", "wide") for s in (0, 1)]
    study_rows = read_csv(out / "report" / "results.csv")
    assert main(["compare", *runs, "--out", str(tmp_path / "by_config")]) == 0
    rows = read_csv(tmp_path / "by_config" / "results.csv")
    assert set(rows) == {"model.kwargs.width=4", "model.kwargs.width=8"}
    assert rows["model.kwargs.width=8"]["top1_error_mean"] == study_rows["wide"]["top1_error_mean"]
    assert rows["model.kwargs.width=4"]["top1_error_std"] == study_rows["narrow"]["top1_error_std"]
    assert main(["compare", *runs, "--group-by-parent", "--out", str(tmp_path / "by_parent")]) == 0
    rows = read_csv(tmp_path / "by_parent" / "results.csv")
    assert set(rows) == {"narrow", "wide"} and rows["narrow"]["n"] == "2"
    assert (tmp_path / "by_parent" / "curves.png").is_file() and (tmp_path / "by_parent" / "report.html").is_file()
    # a single run: n = 1, no standard deviation
    assert main(["compare", runs[0], "--out", str(tmp_path / "one")]) == 0
    (row,) = read_csv(tmp_path / "one" / "results.csv").values()
    assert row["n"] == "1" and row["top1_error_std"] == ""
    assert float(row["top1_error_mean"]) == pytest.approx(final_error(out / "narrow" / "seed0"), abs=1e-4)
    assert "± –" in (tmp_path / "one" / "results.md").read_text()
    capsys.readouterr()
    assert main(["compare", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_compare_adds_robustness_columns_from_the_runs_reports(tiny_study, tmp_path):
    out, _ = tiny_study
    runs = [out / "narrow" / f"seed{s}" for s in (0, 1)]
    copies = []
    for i, run in enumerate(runs):  # copies, so the shared study folder stays as the other tests expect
        copy = tmp_path / "narrow" / f"seed{i}"
        shutil.copytree(run, copy)
        copies.append(copy)
    # a robustness.json as `deepres robustness` writes it (version 2: in percent): errors per corruption and
    # severity, mCE in the summary; a version-1 report (fractions) reads the same
    for copy, (noise, mce) in zip(copies, ((30.0, 90.0), (50.0, 110.0))):
        (copy / "robustness").mkdir()
        (copy / "robustness" / "robustness.json").write_text(json.dumps(
            {"version": 2, "errors": {"gaussian_noise": {"1": noise, "2": noise + 20}},
             "summary": {"mce_evaluated": mce}}))
    old = tmp_path / "v1.json"
    old.write_text(json.dumps({"errors": {"gaussian_noise": {"1": 0.3, "2": 0.5}}, "summary": {"mce_evaluated": 0.9}}))
    assert read_robustness(old) == pytest.approx({"corruption_error": 40.0, "mce": 90.0})
    assert main(["compare", *map(str, copies), "--group-by-parent", "--out", str(tmp_path / "r")]) == 0
    row = read_csv(tmp_path / "r" / "results.csv")["narrow"]
    assert float(row["corruption_error_mean"]) == pytest.approx(50.0)  # runs: 40 and 60 %
    assert float(row["corruption_error_std"]) == pytest.approx(statistics.stdev([40.0, 60.0]), abs=1e-4)
    assert float(row["mce_mean"]) == pytest.approx(100.0)
    assert "mCE (%)" in (tmp_path / "r" / "results.md").read_text()


def test_compare_out_keeps_an_existing_directory_unless_forced(tiny_study, tmp_path, capsys):
    out, _ = tiny_study
    run = str(out / "narrow" / "seed0")
    target = tmp_path / "report"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    assert main(["compare", run, "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--force" in err and str(target) in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]  # nothing written
    assert main(["compare", run, "--out", str(target), "--force"]) == 0
    assert (target / "results.csv").is_file() and (target / "notes.txt").read_text() == "mine"  # only the report
    (tmp_path / "a_file").write_text("x")
    assert main(["compare", run, "--out", str(tmp_path / "a_file"), "--force"]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_interrupted_study_resumes_without_redoing_finished_runs(tmp_path, capsys):
    write_recipe(tmp_path)
    study = load_study(write_study(tmp_path, """
base: tiny.yaml
variants: {a: [], b: [optim.lr=0.05], c: [optim.lr=0.02]}
"""))
    plan = plan_study(study, tmp_path / "out")
    outcomes = run_study(plan, max_runs=1, log=lambda line: None)  # a study stopped after one run
    assert [o.after for o in outcomes] == ["finished", "new", "new"]
    fit(plan[1].config, stop_after_epochs=1, log=lambda line: None)  # the second killed after its first epoch
    (plan[2].run_dir).mkdir(parents=True)
    (plan[2].run_dir / "metrics.jsonl").write_text("")  # the third killed before its first checkpoint
    assert [run_state(r.run_dir) for r in plan] == ["finished", "interrupted", "incomplete"]
    finished = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in plan[0].run_dir.rglob("*") if p.is_file()}
    first_epoch = (plan[1].run_dir / "metrics.jsonl").read_text()

    lines = []
    outcomes = run_study(plan, log=lines.append)
    assert [(o.before, o.after) for o in outcomes] == [("finished", "finished"), ("interrupted", "finished"),
                                                       ("incomplete", "finished")]
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in finished} == finished
    resumed = (plan[1].run_dir / "metrics.jsonl").read_text()
    assert resumed.startswith(first_epoch)  # epoch 1 kept, epoch 2 appended: resumed, not restarted
    assert [json.loads(line)["epoch"] for line in resumed.splitlines() if '"epoch"' in line] == [1, 2]
    assert any("resuming" in line and "b/seed0" in line for line in lines)
    assert (tmp_path / "out" / "c" / "seed0.incomplete1" / "metrics.jsonl").is_file()  # set aside, not deleted

    # same folder, other settings: refused instead of mixing results
    changed = plan_study(load_study(write_study(tmp_path, """
base: tiny.yaml
variants: {a: [optim.lr=0.2], b: [optim.lr=0.05], c: [optim.lr=0.02]}
""")), tmp_path / "out")
    with pytest.raises(ValueError, match=r"holds a run made with other settings \(optim.lr: stored 0.1, now 0.2"):
        run_study(changed, log=lambda line: None)


def test_parallel_gives_the_same_table_as_sequential(tmp_path):
    write_recipe(tmp_path, model="resnet20", epochs=1)  # a registered model: the spawned workers know it
    study = write_study(tmp_path, """
base: tiny.yaml
seeds: [1]
variants: {plain: [], bn_after_add: [model.kwargs.bn_after_add=true]}
""")
    # one torch thread per run in both, so the arithmetic is the same
    assert main(["study", str(study), "--out", str(tmp_path / "p1"), "--threads", "1"]) == 0
    assert main(["study", str(study), "--out", str(tmp_path / "p2"), "--parallel", "2", "--threads", "1"]) == 0
    sequential, parallel = read_csv(tmp_path / "p1/report/results.csv"), read_csv(tmp_path / "p2/report/results.csv")
    for row in (*sequential.values(), *parallel.values()):
        del row["train_time_s"]
    assert parallel == sequential
    assert json.loads((tmp_path / "p2/plain/seed1/env.json").read_text())["num_threads"] == 1


def test_dry_run_lists_runs_and_trains_nothing(tmp_path, capsys):
    write_recipe(tmp_path)
    study = write_study(tmp_path, "base: tiny.yaml\nseeds: [3]\nvariants: {a: [], b: [optim.lr=0.05]}\n")
    assert main(["study", str(study), "--out", str(tmp_path / "out"), "--dry-run", "--set", "train.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "2 runs" in out and "new         a/seed3" in out and "b/seed3: optim.lr=0.05" in out
    assert "train.epochs=1" in out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, args, message", [
    ("base: tiny.yaml\nvariants: {a: []}\nseed: [1]\n", [], "unknown study key 'seed'; did you mean: seeds?"),
    ("base: tiny.yaml\nvariants: {a: []}\noptim: {lr: 1}\n", [], "training config keys go in `overrides:`"),
    ("base: tiny.yaml\nvariants: {a: []}\nreport: {metrc: top1}\n", [], "'report.metrc'; did you mean: report.metric"),
    ("base: tiny.yaml\nvariants: {a: []}\nreport: {columns: [flops]}\n", [], "report.columns: unknown 'flops'"),
    ("base: tiny.yaml\nvariants: {a: [optim.lrr=1]}\n", [], "variant 'a': --set optim.lrr=1: unknown config key"),
    ("base: tiny.yaml\nvariants: {a: []}\nseeds: [0, 0]\n", [], "all different"),
    ("base: tiny.yaml\nvariants: {a: []}\n", ["--set", "train.seed=3"], "the study sets train.seed itself"),
    ("base: tiny.yaml\nvariants: {a: []}\n", ["--data", "imagenet"], "not a data preset; presets: cifar10"),
    ("base: tiny.yaml\nvariants: {a: []}\n", ["--budget", "gpu"], "budget='gpu': not in budgets"),
    ("base: tiny.yaml\nvariants: {a: []}\n", ["--variants", "b"], "--variants: b not in"),
    ("base: nothere.yaml\nvariants: {a: []}\n", [], "base: recipe 'nothere.yaml' not found"),
    ("base: tiny.yaml\nvariants: {a/b: []}\n", [], "must be a plain folder name"),
])
def test_study_errors_name_the_key_and_file(tmp_path, capsys, text, args, message):
    write_recipe(tmp_path)
    study = write_study(tmp_path, text)
    assert main(["study", str(study), "--out", str(tmp_path / "out"), "--dry-run", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if "--set" not in args and "--variants" not in args and "--data" not in args and "--budget" not in args:
        assert str(study) in err


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_studies_plan_on_fashion_mnist(name, tmp_path):
    """Every shipped study's runs are valid configs, with the data preset and the CPU budget applied."""
    from deepres.studies import with_selection

    study = with_selection(load_study(name), data="fashion_mnist", budget="cpu", seeds=[0, 1])
    plan = plan_study(study, tmp_path)
    assert len(plan) == 2 * len(study.variants)
    cfg = plan[0].config
    assert (cfg.data.name, cfg.data.image_size, cfg.data.mean, cfg.train.epochs, cfg.train.max_iters) == \
        ("fashion_mnist", 28, (0.286,), 6, 0)
    assert len({str(p.run_dir) for p in plan}) == len(plan)
    assert [p.config.train.seed for p in plan[:2]] == [0, 1]
    default = plan_study(load_study(name), tmp_path)  # as shipped: the base recipe's data and schedule
    assert default[0].config.data.name == "cifar10" and default[0].config.train.max_iters == 64000


@pytest.mark.parametrize("data, side", [
    ({"name": "cifar10", "image_size": 224}, 32),
    ({"name": "fashion_mnist"}, 28),
    ({"name": "cifar10", "image_size": 24, "random_resized_crop": True}, 24),
    ({"name": "folder", "image_size": 160}, 160),
    ({"name": "retired_format", "image_size": 96, "retired_key": 1}, 96),  # a run written by other code
    ({"name": "synthetic", "synthetic_image_size": 8}, 8),
    ({"name": "synthetic", "synthetic_image_size": 8, "image_size": 6, "random_resized_crop": True}, 6),
])
def test_model_cost_side_is_the_training_image_side(data, side):
    assert input_side(data) == side
    if data["name"] == "synthetic":  # the loader agrees
        cfg = DataConfig(**data, synthetic_size=(8, 4), batch_size=4, workers=0)
        images, _ = next(iter(build_loaders(cfg, "cpu")[0]))
        assert images.shape[-2:] == (side, side)


def test_assemble_tricks_study_plans_cumulative_variants_that_build(tmp_path):
    """studies/assemble_tricks.yaml: each variant's config is valid and its model builds with its switches."""
    from deepres.models import create_model
    from deepres.studies import with_selection

    study = with_selection(load_study("assemble_tricks"), data="fashion_mnist", budget="cpu", seeds=[0, 1])
    plan = plan_study(study, tmp_path)
    assert len(plan) == 2 * len(study.variants) == 16
    last = plan[-1].config
    assert last.data.auto_augment == "autoaugment" and last.train.dropblock_keep == 0.9
    assert last.model.kwargs == {"sk": True, "dropblock": True, "aa": "conv"}
    for run in plan[::2]:
        create_model(run.config.model.name, num_classes=10, in_chans=1, **run.config.model.kwargs)


def test_a_run_another_process_trains_is_not_set_aside(tmp_path):
    """A second study process on the same folder must not move a run directory the first one is training in."""
    run_dir = tmp_path / "v" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("{}\n")
    with lock_run_dir(run_dir):
        with pytest.raises(FileExistsError, match="is in use by pid"):
            _set_aside(run_dir)
    assert run_dir.is_dir() and (run_dir / "config.yaml").is_file()
    moved = _set_aside(run_dir)
    assert moved.name == "seed0.incomplete1" and (moved / "config.yaml").is_file() and not run_dir.exists()


def test_wider_deeper_study_pairs_networks_of_matched_parameter_counts(tmp_path):
    """studies/wider_deeper.yaml: each ResNet-38-shaped variant is within 5% of the parameters of the CIFAR ResNet
    it is listed after, on Fashion-MNIST (1 channel, 10 classes)."""
    from deepres.models import create_model
    from deepres.studies import with_selection

    study = with_selection(load_study("wider_deeper"), data="fashion_mnist", budget="cpu", seeds=[0])
    plan = plan_study(study, tmp_path)
    counts = [sum(p.numel() for p in create_model(run.config.model.name, num_classes=10, in_chans=1,
                                                   **run.config.model.kwargs).parameters()) for run in plan]
    assert [run.config.model.name for run in plan] == ["resnet20", "resnet38_a1", "resnet56", "resnet38_a1",
                                                       "resnet110", "resnet38_a1"]
    for deep, wide in zip(counts[::2], counts[1::2]):
        assert abs(wide / deep - 1) < 0.05, counts


def test_wider_deeper_seg_study_pairs_fcns_of_matched_parameter_counts(tmp_path):
    """studies/wider_deeper_seg.yaml: each ResNet-38-shaped FCN (its kwargs replacing the base recipe's CIFAR ones)
    is within 2% of the parameters of the FCN-ResNet it is listed after, on the scenes (1 channel, 11 classes), and
    every network keeps the recipe's output stride 4."""
    from deepres.models import create_model

    plan = plan_study(load_study("wider_deeper_seg"), tmp_path)
    models = [create_model(run.config.model.name, num_classes=11, in_chans=1, **run.config.model.kwargs)
              for run in plan if run.seed == 0]
    assert [type(m.backbone).__name__ for m in models] == ["ResNet", "ResNet38", "ResNet", "ResNet38"]
    assert [m.output_stride for m in models] == [4, 4, 4, 4]
    counts = [sum(p.numel() for p in m.parameters()) for m in models]
    for deep, wide in zip(counts[::2], counts[1::2]):
        assert abs(wide / deep - 1) < 0.02, counts


def test_a_segmentation_study_reports_100_minus_miou(tmp_path):
    """report.metric: miou reads each epoch record's mIoU (what a segmentation run writes) as the error's complement."""
    from deepres.studies import read_run, summarize

    for seed, mious in ((0, [40.0, 61.5]), (1, [42.0, 63.5])):
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        (run / "metrics.jsonl").write_text("".join(
            json.dumps({"kind": "epoch", "epoch": e + 1, "miou": m, "pixel_acc": 90.0, "train_loss": 1.0 / (e + 1),
                        "epoch_time_s": 2.0}) + "\n" for e, m in enumerate(mious)))
    runs = [read_run(tmp_path / f"seed{s}", variant="fcn", seed=s, metric="miou") for s in (0, 1)]
    assert [r.final_error for r in runs] == [38.5, 36.5] and [r.final_train_loss for r in runs] == [0.5, 0.5]
    summary = summarize("fcn", runs)
    assert summary.mean == pytest.approx(37.5) and summary.train_loss[:2] == (0.5, 0.0)
    assert load_study_text_metric(tmp_path) == "miou"


def load_study_text_metric(directory):
    write_recipe(directory)
    study = write_study(directory, "base: tiny.yaml\nvariants: {a: []}\nreport: {metric: miou}\n")
    return load_study(study).report.metric
