"""Checkpoints: bare-model safetensors + weights_only state, atomic writes, RNG round trip."""
import os
import random

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from deepres.core.files import atomic_write
from deepres.core.checkpoint import (STATE_FORMAT, capture_rng_state, checkpoint_paths,
                                      load_checkpoint, load_weights, repair_checkpoints, restore_rng_state,
                                      save_checkpoint, unwrap_model)


@pytest.fixture
def umask_027():
    """Run under umask 027: new files should be 0640 and new folders 0750, as any program's are."""
    old = os.umask(0o027)
    yield
    os.umask(old)


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


def trained_state(model):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    opt.step()
    return {"step": 7, "epoch": 1, "optimizer": opt.state_dict(), "rng": capture_rng_state(), "best_top1": 55.5,
            "ema": None}


def test_save_load_round_trip_bare_model_and_weights_only_state(tmp_path):
    model = net()
    wrapped = torch.compile(model, backend="eager").to(memory_format=torch.channels_last)
    state = trained_state(model)
    config = {"model": {"name": "tiny"}, "optim": {"betas": [0.9, 0.999]}}
    save_checkpoint(tmp_path, "last", model=wrapped, state=state, config=config, classes=["cat", "dog"])
    tensors, loaded = load_checkpoint(tmp_path, "last")  # torch.load(weights_only=True) inside
    assert set(tensors) == set(model.state_dict())  # no "_orig_mod." prefix
    assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())
    assert loaded["step"] == 7 and loaded["epoch"] == 1 and loaded["best_top1"] == 55.5
    assert loaded["config"] == config
    assert torch.equal(loaded["optimizer"]["state"][0]["momentum_buffer"],
                       state["optimizer"]["state"][0]["momentum_buffer"])
    _, meta = load_weights(tmp_path / "last.safetensors")
    assert meta["config"] == config and meta["classes"] == ["cat", "dog"]
    assert meta["model_class"].endswith("Sequential") and meta["step"] == "7"
    assert unwrap_model(wrapped) is model


def test_rng_state_round_trip_reproduces_every_generator(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()  # leaves a cached gaussian in the numpy state
    saved = capture_rng_state()
    atomic_write(tmp_path / "rng.pt", lambda f: torch.save(saved, f))
    expected = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2:] == again[2:]


def test_stray_and_truncated_temp_files_are_ignored(tmp_path):
    model = net()
    save_checkpoint(tmp_path, "last", model=model, state=trained_state(model), config={})
    weights, state_file = checkpoint_paths(tmp_path, "last")
    # what a crash mid-save leaves behind: temp files beside the real ones, one truncated, one garbage
    (tmp_path / ".last.state.pt.abc123.tmp").write_bytes(state_file.read_bytes()[:100])
    (tmp_path / ".last.safetensors.xyz.tmp").write_bytes(b"\x00garbage")
    tensors, state = load_checkpoint(tmp_path, "last")
    assert state["step"] == 7 and torch.equal(tensors["0.weight"], model[0].weight)


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "file.bin"
    atomic_write(target, lambda f: f.write(b"old"))

    def crash(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, crash)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_mismatched_or_truncated_pair_is_refused(tmp_path):
    model = net()
    state = trained_state(model)
    save_checkpoint(tmp_path / "a", "last", model=model, state=state, config={})
    save_checkpoint(tmp_path / "b", "last", model=model, state={**state, "step": 8}, config={})
    (tmp_path / "a" / "last.safetensors").replace(tmp_path / "b" / "last.safetensors")  # step 7 weights
    with pytest.raises(ValueError, match="inconsistent"):
        load_checkpoint(tmp_path / "b", "last")
    save_checkpoint(tmp_path / "c", "last", model=model, state=state, config={})
    path = tmp_path / "c" / "last.state.pt"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="not a readable training state"):
        load_checkpoint(tmp_path / "c", "last")
    with pytest.raises(FileNotFoundError, match="no checkpoint 'best'"):
        load_checkpoint(tmp_path / "c", "best")


def test_one_save_under_several_names_writes_the_bytes_of_separate_saves(tmp_path):
    model = net()
    state = trained_state(model)
    config = {"model": {"name": "tiny"}}
    paths = save_checkpoint(tmp_path / "both", "last", model=model, state=state, config=config, classes=["a"],
                            also=("best",))
    assert paths == checkpoint_paths(tmp_path / "both", "last")
    # the files as written before `also` existed: torch.save straight into the file, one checkpoint per call
    reference = tmp_path / "ref"
    weights, state_file = checkpoint_paths(reference, "ref")
    save_checkpoint(reference, "ref", model=model, state=state, config=config, classes=["a"])
    atomic_write(state_file, lambda f: torch.save({"format": STATE_FORMAT, **state, "config": config}, f))
    # safetensors writes the metadata in hash-map order, so two saves of one model differ in the order of the
    # header's metadata keys only: compare what the weights files hold, and the state files byte for byte
    ref_tensors, ref_meta = load_weights(weights)
    for name in ("last", "best"):
        got_weights, got_state = checkpoint_paths(tmp_path / "both", name)
        tensors, meta = load_weights(got_weights)
        assert meta == ref_meta and tensors.keys() == ref_tensors.keys()
        assert all(torch.equal(v, ref_tensors[k]) for k, v in tensors.items())
        assert len(got_weights.read_bytes()) == len(weights.read_bytes())
        assert got_state.read_bytes() == state_file.read_bytes()
        assert load_checkpoint(tmp_path / "both", name)[1]["step"] == 7
    both = tmp_path / "both"
    assert (both / "best.safetensors").read_bytes() == (both / "last.safetensors").read_bytes()
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == [
        "best.safetensors", "best.state.pt", "last.safetensors", "last.state.pt"]


@pytest.mark.parametrize("key", ["config", "classes"])
def test_metadata_that_is_not_json_names_the_file_and_key(tmp_path, key):
    path = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={key: "{not json"})
    with pytest.raises(ValueError, match=rf"w\.safetensors: metadata {key!r} is not JSON") as info:
        load_weights(path)
    assert "\n" not in str(info.value)


def test_written_files_honour_the_umask(tmp_path, umask_027):
    save_checkpoint(tmp_path / "checkpoints", "last", model=net(), state={"step": 1, "epoch": 1}, config={})
    atomic_write(tmp_path / "manifest.csv", lambda f: f.write(b"path,label\n"))
    files = sorted((tmp_path / "checkpoints").iterdir()) + [tmp_path / "manifest.csv"]
    assert len(files) == 3
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: "0o640" for p in files}


def torn_pair(directory, model, state):
    """What kill -9 between a save's two renames leaves: last.state.pt from step 8 over a last.safetensors still
    from step 7, and the step-8 weights complete in their temp file (plus an older, truncated temp)."""
    save_checkpoint(directory, "last", model=model, state=state, config={})
    newer = directory.parent / "newer"
    save_checkpoint(newer, "last", model=model, state={**state, "step": 8}, config={})
    weights, state_file = checkpoint_paths(newer, "last")
    state_file.replace(directory / "last.state.pt")
    weights.replace(directory / ".last.safetensors.k9x2ab.tmp")
    (directory / ".last.state.pt.old123.tmp").write_bytes(b"PK\x03\x04 half a zip")


def test_a_pair_torn_between_its_renames_is_repaired_from_its_temp_file(tmp_path):
    model = net()
    directory = tmp_path / "checkpoints"
    torn_pair(directory, model, trained_state(model))
    (directory / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="inconsistent"):
        load_checkpoint(directory, "last")
    said = repair_checkpoints(directory)
    assert len(said) == 1 and "step 8" in said[0] and ".last.safetensors.k9x2ab.tmp" in said[0]
    weights, state = load_checkpoint(directory, "last")
    assert state["step"] == 8 and torch.equal(weights["0.weight"], model[0].weight)
    assert sorted(p.name for p in directory.iterdir()) == ["last.safetensors", "last.state.pt", "notes.txt"]
    assert repair_checkpoints(directory) == []  # whole again: nothing to do


def test_a_torn_pair_without_its_temp_file_says_what_to_do(tmp_path):
    model = net()
    directory = tmp_path / "checkpoints"
    torn_pair(directory, model, trained_state(model))
    (directory / ".last.safetensors.k9x2ab.tmp").unlink()
    save_checkpoint(directory, "best", model=model, state={**trained_state(model), "step": 4}, config={})
    with pytest.raises(ValueError) as err:
        repair_checkpoints(directory)
    message = str(err.value)
    assert "step 7" in message and "step 8" in message and "best" in message and "--resume" in message
    assert "delete" in message and "last.safetensors" in message and "last.state.pt" in message
    with pytest.raises(ValueError, match="delete"):
        load_checkpoint(directory, "last")
    assert not list(directory.glob(".*.tmp"))  # the leftovers go either way
