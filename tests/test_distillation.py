"""Assemble-ResNet's training pieces in the classification task: per-sample mixup and knowledge distillation
(online: a frozen teacher run on every mixed batch), against hand computations and through a tiny fit."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from train_fakes import TINY_MODEL, tiny_loaders

from deepres.core.config import Config, DataConfig, ModelConfig, RunConfig, TrainConfig, validate_config
from deepres.tasks.classification import ClassificationTask, distillation_loss, mixup_cutmix
from deepres.train.loop import fit


def test_per_sample_mixup_draws_one_lambda_per_image():
    images = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 2, 2).clone()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    mixed, targets, lam, mode = mixup_cutmix(images, labels, num_classes=3, mixup_alpha=0.2, per_sample=True,
                                             rng=np.random.default_rng(0))
    rng = np.random.default_rng(0)
    rng.random()  # mix_prob draw
    lams = torch.tensor(rng.beta(0.2, 0.2, size=6), dtype=torch.float32)
    expected = images * lams.view(6, 1, 1, 1) + images.flip(0) * (1 - lams.view(6, 1, 1, 1))
    assert mode == "mixup" and torch.allclose(mixed, expected)
    assert len(set(lams.tolist())) == 6 and lam == pytest.approx(float(lams.mean()))
    assert torch.allclose(targets.sum(1), torch.ones(6))
    onehot = F.one_hot(labels, 3).float()
    assert torch.allclose(targets, onehot * lams[:, None] + onehot.flip(0) * (1 - lams[:, None]))


def test_distillation_loss_matches_a_hand_computation():
    student = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0]])
    t = 2.0
    p = torch.exp(teacher / t) / torch.exp(teacher / t).sum()
    log_q = student / t - torch.log(torch.exp(student / t).sum())
    expected = -(p * log_q).sum() * t * t
    assert torch.isclose(distillation_loss(student, teacher, t), expected)


def test_task_with_a_teacher_mixes_its_logits_into_the_loss():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    train = TrainConfig(label_smoothing=0.1, kd_temperature=2.0, kd_weight=0.5, kd_ce_weight=0.8, amp="none")
    task = ClassificationTask(3, train, Config().eval, teacher=teacher)
    images, labels = torch.randn(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    mixed, (targets, teacher_logits) = task.mix(images, labels, np.random.default_rng(0))
    assert torch.equal(mixed, images) and torch.equal(targets, labels)  # no mixing asked
    assert torch.allclose(teacher_logits, teacher(images))
    logits = torch.randn(5, 3)
    expected = (0.8 * F.cross_entropy(logits, labels, label_smoothing=0.1)
                + 0.5 * distillation_loss(logits, teacher_logits, 2.0))
    assert torch.isclose(task.loss(logits, (targets, teacher_logits)), expected)


def test_fit_distills_from_a_teacher_checkpoint(tmp_path):
    base = dict(model=ModelConfig(name=TINY_MODEL), data=DataConfig(name="synthetic", batch_size=16))
    teacher = Config(**base, train=TrainConfig(epochs=1, progress=False), run=RunConfig(out_dir=str(tmp_path),
                                                                                       name="teacher"))
    fit(teacher, loaders=tiny_loaders(), device="cpu", log=lambda _: None)
    student = Config(**base, train=TrainConfig(epochs=1, progress=False, kd_teacher=str(tmp_path / "teacher"),
                                               kd_temperature=4.0, mixup_alpha=0.2, mixup_per_sample=True),
                     run=RunConfig(out_dir=str(tmp_path), name="student"))
    lines = []
    result = fit(student, loaders=tiny_loaders(), device="cpu", log=lines.append)
    assert result["finished"] and 0 <= result["top1"] <= 100
    bad = Config(**base, train=TrainConfig(kd_temperature=0.0))
    with pytest.raises(ValueError, match="kd_temperature"):
        validate_config(bad)


# ------------------------------------------------------------------------------------- offline distillation
def test_stored_teacher_logits_are_looked_up_by_index_and_mixed_with_the_labels_lam():
    num_classes, t = 4, 2.0
    stored = torch.randn(10, num_classes)
    task = ClassificationTask(num_classes, TrainConfig(mixup_alpha=0.4, mixup_per_sample=True, kd_temperature=t),
                              Config().eval, teacher_logits=stored)
    labels, indices = torch.tensor([0, 1, 2, 3]), torch.tensor([7, 2, 9, 4])
    images = torch.randn(4, 1, 2, 2)
    mixed, (targets, teacher) = task.mix(images, labels, np.random.default_rng(3), indices)
    # the labels of image i and of its partner (the batch reversed) differ, so targets[i, y_i] is image i's lam
    lams = targets[torch.arange(4), labels]
    probs = F.softmax(stored[indices] / t, dim=-1)
    expected = probs * lams[:, None] + probs.flip(0) * (1 - lams[:, None])
    assert not torch.allclose(lams, lams[:1].expand(4))  # per-sample lam
    assert torch.allclose(F.softmax(teacher / t, dim=-1), expected, atol=1e-6)
    logits = torch.randn(4, num_classes)
    kd = -(expected * F.log_softmax(logits / t, dim=-1)).sum(1).mean() * t * t
    assert torch.isclose(task.loss(logits, (targets, teacher)), F.cross_entropy(logits, targets) + kd, atol=1e-5)
    with pytest.raises(ValueError, match="indices"):
        task.mix(images, labels, np.random.default_rng(3))


def test_loader_batch_indices_name_the_images_of_each_training_batch():
    from deepres.data import build_loaders
    cfg = DataConfig(name="synthetic", synthetic_size=(40, 8), batch_size=8)
    train_loader, _, _ = build_loaders(cfg, "cpu", seed=5)
    dataset = train_loader.dataset
    train_loader.set_epoch(1)
    for i, (_, labels) in enumerate(train_loader):
        assert torch.equal(labels, dataset.labels[train_loader.batch_indices(i)])
    assert len(torch.cat([train_loader.batch_indices(i) for i in range(len(train_loader))]).unique()) == 40


def _write_recipe(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"model: {{name: {TINY_MODEL}}}\n"
                      "data: {name: synthetic, synthetic_size: [48, 16], batch_size: 16, in_chans: 1}\n"
                      "train: {epochs: 1, progress: false}\n")
    return recipe


def test_teacher_logits_command_writes_a_file_a_student_trains_from(tmp_path):
    from deepres.cli import main
    from deepres.core.config import load_config
    from deepres.train.distill import compute_teacher_logits, read_teacher_logits
    recipe = _write_recipe(tmp_path)
    teacher_cfg = load_config(str(recipe), [f"run.out_dir={tmp_path}", "run.name=teacher"])
    fit(teacher_cfg, device="cpu", log=lambda _: None)
    out = tmp_path / "logits.safetensors"
    assert main(["teacher-logits", str(tmp_path / "teacher"), str(recipe), "--out", str(out)]) == 0
    logits, classes = compute_teacher_logits(str(tmp_path / "teacher"), teacher_cfg)
    stored = read_teacher_logits(out, num_images=48, classes=classes)
    assert stored.shape == (48, len(classes)) and torch.allclose(stored, logits, atol=1e-2, rtol=1e-2)
    assert main(["teacher-logits", str(tmp_path / "teacher"), str(recipe), "--out", str(out)]) == 2  # exists
    with pytest.raises(ValueError, match="rows"):
        read_teacher_logits(out, num_images=49, classes=classes)
    with pytest.raises(ValueError, match="classes"):
        read_teacher_logits(out, num_images=48, classes=classes[:-1] + ["other"])
    student = load_config(str(recipe), [f"run.out_dir={tmp_path}", "run.name=student", f"train.kd_logits={out}",
                                        "train.mixup_alpha=0.2", "train.kd_temperature=4"])
    assert fit(student, device="cpu", log=lambda _: None)["finished"]
    with pytest.raises(ValueError, match="kd_logits"):
        load_config(str(recipe), [f"train.kd_logits={out}", f"train.kd_teacher={tmp_path / 'teacher'}"])


def _logits_file(path, logits, names=None, **meta):
    """A file laid out as `deepres teacher-logits` writes it (class names `names`, else class_0..class_9); `meta`
    replaces (None: drops) metadata entries."""
    from safetensors.torch import save_file
    from deepres.train.distill import FORMAT
    names = [f"class_{i}" for i in range(10)] if names is None else names
    metadata = {"format": FORMAT, "teacher": "t", "num_images": str(len(logits)), "classes": json.dumps(names)}
    metadata.update(meta)
    save_file({"logits": logits.contiguous()}, str(path), metadata={k: v for k, v in metadata.items() if v is not None})
    return path


def _nan_at(row, col, value=float("nan")):
    logits = torch.randn(48, 10)
    logits[row, col] = value
    return logits


BAD_KD_FILES = {  # name: (how to make it under tmp_path, what the one-line error says)
    "one_dimensional": (lambda p: _logits_file(p, torch.randn(480)), "2-D"),
    "three_dimensional": (lambda p: _logits_file(p, torch.randn(48, 10, 1)), "2-D"),
    "twenty_columns": (lambda p: _logits_file(p, torch.randn(48, 20)), "20 columns"),
    "too_few_rows": (lambda p: _logits_file(p, torch.randn(47, 10)), "47 rows"),
    "nan": (lambda p: _logits_file(p, _nan_at(5, 3)), "row 5"),
    "inf": (lambda p: _logits_file(p, _nan_at(40, 0, float("inf")).half()), "row 40"),
    "integer": (lambda p: _logits_file(p, torch.zeros(48, 10, dtype=torch.int64)), "floating"),
    "no_classes": (lambda p: _logits_file(p, torch.randn(48, 10), **{"classes": None}), "'classes'"),
    "classes_not_json": (lambda p: _logits_file(p, torch.randn(48, 10), **{"classes": "[class_0"}), "'classes'"),
    "classes_not_a_list": (lambda p: _logits_file(p, torch.randn(48, 10), **{"classes": '{"a": 1}'}), "'classes'"),
    "wrong_classes": (lambda p: _logits_file(p, torch.randn(48, 10), names=[f"c{i}" for i in range(10)]),
                      "classes"),
    "num_images_disagrees": (lambda p: _logits_file(p, torch.randn(48, 10), num_images="50"), "num_images"),
    "not_deepres": (lambda p: _logits_file(p, torch.randn(48, 10), format="something"), "teacher-logits file"),
    "garbage": (lambda p: (p.write_bytes(b"\x07" * 64), p)[1], "safetensors"),
    "empty": (lambda p: (p.write_bytes(b""), p)[1], "safetensors"),
    "directory": (lambda p: p.mkdir() or p, "not a file"),
    "missing": (lambda p: p, "does not exist"),
}


@pytest.mark.parametrize("case", list(BAD_KD_FILES))
def test_a_bad_kd_logits_file_is_one_line_exit_2_before_the_run_directory_exists(tmp_path, capsys, case):
    from deepres.cli import main
    make, says = BAD_KD_FILES[case]
    bad = make(tmp_path / "logits.safetensors")
    recipe = _write_recipe(tmp_path)
    out = tmp_path / "runs"
    assert main(["train", str(recipe), "--out", str(out), "--set", f"train.kd_logits={bad}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"deepres train: error: train.kd_logits={bad}: ") and says in err, err
    assert not (out / "tiny").exists()  # nothing made for a run that cannot start


def test_teacher_logits_beyond_float16_are_refused_not_stored_as_inf(tmp_path):
    from deepres.core.config import load_config
    from deepres.train.distill import write_teacher_logits
    cfg = load_config(str(_write_recipe(tmp_path)))
    logits = torch.randn(48, 10)
    logits[7, 2] = 1e6  # float16 holds at most 65504
    with pytest.raises(ValueError, match="image 7.*float16"):
        write_teacher_logits(tmp_path / "out.safetensors", logits, [f"class_{i}" for i in range(10)], teacher="t",
                             cfg=cfg)
    assert not (tmp_path / "out.safetensors").exists()
