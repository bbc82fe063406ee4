"""Issue 11, every interrupted run restarts: a run stopped before its first checkpoint, SIGTERM / Ctrl-C
mid-epoch, leftover and half-renamed checkpoint files, and what the loop says while it runs."""
import pytest
import torch
from train_fakes import tiny_loaders

from deepres.core.checkpoint import load_checkpoint
from deepres.train.loop import fit

from test_train_loop import quiet, tiny_config


class FailingLoader:
    """A train loader that raises after `after` batches of one epoch (a bad image, a full disk...)."""

    def __init__(self, loader, after, error=OSError("bad image: broken.jpg")):
        self.loader, self.after, self.error = loader, after, error

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch):
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.after:
                raise self.error
            yield batch


def failing_loaders(after):
    train, test, info = tiny_loaders()
    return FailingLoader(train, after), test, info


def same_weights(a_dir, b_dir):
    a, _ = load_checkpoint(a_dir / "checkpoints")
    b, _ = load_checkpoint(b_dir / "checkpoints")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ 1. stopped before the first checkpoint


def test_resume_starts_a_run_stopped_before_its_first_checkpoint(tmp_path):
    extras = dict(deterministic=True, epochs=2)
    fit(tiny_config(tmp_path, "straight", **extras), loaders=tiny_loaders(), device="cpu", log=quiet)
    with pytest.raises(OSError, match="bad image"):
        fit(tiny_config(tmp_path, **extras), loaders=failing_loaders(after=2), device="cpu", log=quiet)
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and not (run / "checkpoints" / "last.state.pt").exists()
    with pytest.raises(FileExistsError, match="already holds a run.*--resume"):  # a plain rerun still refuses
        fit(tiny_config(tmp_path, **extras), loaders=tiny_loaders(), device="cpu", log=quiet)
    changed = tiny_config(tmp_path, **extras)
    changed.optim.lr = 0.05
    with pytest.raises(ValueError, match="optim.lr"):  # a differing config is refused, checkpoint or not
        fit(changed, loaders=tiny_loaders(), device="cpu", resume=True, log=quiet)
    lines = []
    result = fit(tiny_config(tmp_path, **extras), loaders=tiny_loaders(), device="cpu", resume=True,
                 log=lines.append)
    assert result["finished"] and result["step"] == 8
    said = [line for line in lines if "no checkpoint" in line]
    assert len(said) == 1 and "starting" in said[0], lines
    assert same_weights(tmp_path / "straight", run)


def test_resume_of_a_run_that_never_started_starts_it(tmp_path):
    # the SLURM recipe passes --resume to the first job as well as to the requeued ones
    result = fit(tiny_config(tmp_path, epochs=1), loaders=tiny_loaders(), device="cpu", resume=True, log=quiet)
    assert result["finished"] and (tmp_path / "run" / "checkpoints" / "last.state.pt").is_file()
