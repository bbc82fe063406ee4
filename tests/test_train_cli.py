"""`deepres train`: errors as one clear line, and an end-to-end run with --max-epochs and --resume."""
from train_fakes import TINY_MODEL

from deepres.cli import main


def recipe(tmp_path, extra=""):
    path = tmp_path / "tiny.yaml"
    path.write_text(f"""
model: {{name: {TINY_MODEL}}}
data: {{name: synthetic, synthetic_size: [64, 32], batch_size: 16, eval_batch_size: 32, crop_padding: 2}}
optim: {{lr: 0.1}}
schedule: {{name: cosine}}
train: {{epochs: 2, log_every_iters: 2}}
expect: {{accuracy: 25.0, note: a test recipe}}
{extra}""")
    return path


def test_unknown_key_and_bad_value_are_one_line_errors(tmp_path, capsys):
    assert main(["train", str(recipe(tmp_path)), "--set", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "deepres train: error:" in err and "optim.lrr" in err and "optim.lr" in err and "Traceback" not in err
    assert main(["train", str(recipe(tmp_path)), "--set", "train.epochs=two"]) == 2
    assert "train.epochs expects int, got 'two'" in capsys.readouterr().err
    assert main(["train", "no_such/recipe"]) == 2
    assert "not found" in capsys.readouterr().err


def test_end_to_end_train_stop_resume_and_refuse_overwrite(tmp_path, capsys):
    args = ["train", str(recipe(tmp_path)), "--out", str(tmp_path / "runs"), "--set", "train.seed=1"]
    assert main([*args, "--max-epochs", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert f"stopped after epoch 1 (continue with `deepres train --resume {tmp_path / 'runs' / 'tiny'}`)" in out[-2]
    assert out[-1].startswith("final test accuracy: top-1 ")
    assert main([*args, "--resume"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("final test accuracy: top-1 ") and "%" in last
    assert (tmp_path / "runs" / "tiny" / "checkpoints" / "last.safetensors").is_file()
    assert main(args) == 2  # a user error (the output is in the way), not a failed run
    assert "already holds a run" in capsys.readouterr().err


def test_an_interrupted_run_exits_with_the_signal_code(tmp_path, monkeypatch):
    import signal

    import deepres.commands.train
    from deepres.core.errors import TrainingInterrupted

    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        def stopped(*_, signum=signum, **__):  # fit after saving checkpoints/last at the step the signal came
            raise TrainingInterrupted(f"stopped by {signum.name} at step 3", signum)

        monkeypatch.setattr(deepres.commands.train, "fit", stopped)
        assert main(["train", str(recipe(tmp_path)), "--out", str(tmp_path / "runs")]) == code
