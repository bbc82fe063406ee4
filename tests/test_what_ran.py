"""Every command says what it ran: `deepres predict` prints the model, its preprocessing and the precision path for
a classifier and a segmentation model alike (one code path), and `deepres study --dry-run` marks each run that would
fail on a missing file and exits 2."""
import pytest
import torch
from data_helpers import write_image

from deepres.cli import main
from deepres.core.checkpoint import save_checkpoint
from deepres.core.config import Config, config_to_dict
from deepres.models import create_model
from deepres.models.pretrained import list_pretrained

# task -> (model, data.name, model kwargs)
MODELS = {"classification": ("resnet20", "synthetic", {}),
          "segmentation": ("fcn_resnet20", "pairs", {"widths": [8, 16, 32]})}


def run_dir(tmp_path, task: str):
    """A run directory holding a 3-class, 3-channel model of `task` with random weights."""
    name, data, kwargs = MODELS[task]
    cfg = Config()
    cfg.model.name, cfg.model.num_classes, cfg.model.in_chans, cfg.model.kwargs = name, 3, 3, kwargs
    cfg.data.name, cfg.data.image_size = data, 16
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run" / "checkpoints", "last", model=create_model(name, num_classes=3, in_chans=3,
                                                                                **kwargs),
                    state={"step": 1, "epoch": 1}, config=config_to_dict(cfg), classes=["a", "b", "c"])
    return tmp_path / "run"


@pytest.mark.parametrize("precision", ["auto", "eager"])
@pytest.mark.parametrize("task", list(MODELS))
def test_predict_says_model_preprocessing_and_precision_path_for_every_task(task, precision, tmp_path, capsys):
    run = run_dir(tmp_path, task)
    for i in range(2):
        write_image(tmp_path / "images" / f"{i}.png", size=(20, 16), seed=i)
    assert main(["predict", str(tmp_path / "images"), "--model", str(run), "--device", "cpu",
                 "--precision", precision]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 2  # one line per image on stdout
    err = captured.err.strip().splitlines()
    assert err[0].startswith(f"{run}: {task}, 3 classes, ") and err[0].endswith("3 channel(s)")
    assert "px" in err[0] or "as stored" in err[0]  # the preprocessing
    path = [line for line in err if line.startswith("precision path: ")]
    assert len(path) == 1 and " on cpu " in path[0] and "; why: " in path[0]
    if precision == "eager":
        assert path[0].startswith("precision path: eager fp32 on cpu") and "'eager' was asked for" in path[0]


def test_study_dry_run_marks_runs_that_would_miss_a_file_and_exits_2(tmp_path, capsys):
    (tmp_path / "tiny.yaml").write_text("model: {name: resnet20}\ndata: {name: synthetic}\n")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    published = list_pretrained()[0]
    study = tmp_path / "study.yaml"
    study.write_text(f"""
base: tiny.yaml
seeds: [0]
variants:
  plain: []
  published: [model.pretrained={published}]
  from_plain: [model.pretrained={out}/plain/seed0]
  pretrained: [model.pretrained={tmp_path}/nothere]
  empty: [model.pretrained={tmp_path}/empty]
  teacher: [train.kd_teacher={tmp_path}/teacher]
  logits: [train.kd_logits={tmp_path}/logits.safetensors]
  data: [data.name=folder, data.root={tmp_path}/images]
""")
    assert main(["study", str(study), "--out", str(out), "--dry-run"]) == 2
    captured = capsys.readouterr()
    lines = {line.split()[1].rstrip(":"): line for line in captured.out.splitlines() if line.startswith("  ")}
    assert len(lines) == 8
    for ok in ("plain/seed0", "published/seed0", "from_plain/seed0"):  # published weights; a run this study makes
        assert "MISSING" not in lines[ok]
    assert lines["pretrained/seed0"].endswith(f"  MISSING model.pretrained={tmp_path}/nothere (does not exist)")
    assert lines["empty/seed0"].endswith(f"  MISSING model.pretrained={tmp_path}/empty (no checkpoints/"
                                         f"best.safetensors or last.safetensors in this folder)")
    assert lines["teacher/seed0"].endswith(f"  MISSING train.kd_teacher={tmp_path}/teacher (does not exist)")
    assert lines["logits/seed0"].endswith(f"  MISSING train.kd_logits={tmp_path}/logits.safetensors (no such file)")
    assert lines["data/seed0"].endswith(f"  MISSING data.root={tmp_path}/images (does not exist)")
    assert captured.err.strip() == "deepres study: error: 5 of 8 runs would fail on a missing file (marked MISSING)"
    assert not out.exists()  # a dry run writes nothing

    (tmp_path / "logits.safetensors").write_bytes(b"")  # present now: the dry run passes (it does not read it)
    (tmp_path / "images").mkdir()
    assert main(["study", str(study), "--out", str(out), "--dry-run", "--variants", "plain,logits,data"]) == 0
    assert "MISSING" not in capsys.readouterr().out
