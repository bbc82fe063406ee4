"""build_loaders: batches, determinism per (seed, epoch, rank), eval coverage, sharding, both loading paths."""
import dataclasses
import logging
import multiprocessing
import signal
import subprocess
import time

import pytest
import torch

from data_helpers import FASHION_MNIST_DIR, write_image, write_mnist
from deepres.data import (DataConfig, DataInfo, TooManyBadImagesError, build_datasets, build_eval_loader,
                          build_loaders, eval_preprocess)
from deepres.data.images import BadImageError
from deepres.data.loaders import _init_loader_worker
from deepres.inference.preprocess import preprocess_image

# Raw pixel values out: plain mean subtraction with a zero mean.
RAW = dict(normalize="mean", mean=(0.0,), std=(1.0,))


def synthetic(**overrides) -> DataConfig:
    base = dict(name="synthetic", synthetic_size=(100, 37), synthetic_image_size=8, batch_size=16,
                eval_batch_size=10, workers=0)
    return DataConfig(**{**base, **overrides})


def epoch(loader, number):
    loader.set_epoch(number)
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def keys(images: torch.Tensor) -> list[bytes]:
    """One hashable key per image, to recognise samples in the loader's output."""
    return [bytes(image.to(torch.uint8).flatten().tolist()) for image in images]


# ------------------------------------------------------------------------------------------ in-memory path
def test_batches_info_and_lengths():
    train, val, info = build_loaders(synthetic(crop_padding=2), "cpu", seed=3)
    assert info == DataInfo(num_classes=10, in_chans=3, classes=[f"class_{i}" for i in range(10)], train_size=100,
                        eval_size=37)
    assert (len(train), len(val)) == (6, 4)  # train drops the last 4 images; eval keeps a last batch of 7
    assert (train.batch_size, train.dataset_size, val.dataset_size) == (16, 100, 37)
    images, labels = next(iter(train))
    assert images.shape == (16, 3, 8, 8) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.device.type == "cpu" and labels.device.type == "cpu"
    assert [len(y) for _, y in val] == [10, 10, 10, 7]


def test_same_epoch_replays_exactly_and_epochs_differ():
    cfg = synthetic(crop_padding=2, hflip=True, color_jitter=0.2, pca_lighting=0.1)
    train, _, _ = build_loaders(cfg, "cpu", seed=5)
    x0, y0 = epoch(train, 0)
    x1, y1 = epoch(train, 1)
    torch.manual_seed(12345)  # global RNG state must not matter
    x0_again, y0_again = epoch(train, 0)
    assert torch.equal(x0, x0_again) and torch.equal(y0, y0_again)
    assert not torch.equal(y0, y1)
    fresh, _, _ = build_loaders(cfg, "cpu", seed=5)  # a resumed run builds new loaders
    assert torch.equal(epoch(fresh, 1)[0], x1)
    other_seed, _, _ = build_loaders(cfg, "cpu", seed=6)
    assert not torch.equal(epoch(other_seed, 0)[1], y0)


def test_iteration_leaves_global_rng_alone():
    train, val, _ = build_loaders(synthetic(crop_padding=1, random_resized_crop=True, image_size=6), "cpu")
    state = torch.get_rng_state()
    epoch(train, 2)
    epoch(val, 0)
    assert torch.equal(state, torch.get_rng_state())


def test_eval_yields_every_sample_once_in_order():
    cfg = synthetic(limit_val=33, **RAW)
    _, val, info = build_loaders(cfg, "cpu")
    _, dataset = build_datasets(cfg)
    images, labels = epoch(val, 0)
    assert info.eval_size == 33
    assert torch.equal(images, dataset.images.float()) and torch.equal(labels, dataset.labels)


def test_train_epoch_is_a_permutation_without_repeats():
    cfg = synthetic(hflip=False, **RAW)
    train, _, _ = build_loaders(cfg, "cpu")
    dataset, _ = build_datasets(cfg)
    images, _ = epoch(train, 0)
    seen = keys(images)
    assert len(set(seen)) == 96 and set(seen) <= set(keys(dataset.images))


def test_two_ranks_get_disjoint_complete_shards():
    cfg = synthetic(hflip=False, **RAW)
    dataset, eval_set = build_datasets(cfg)
    train_keys, eval_images = [], []
    for rank in range(2):
        train, val, _ = build_loaders(cfg, "cpu", rank=rank, world_size=2)
        assert len(train) == 50 // 16
        train_keys.append(set(keys(epoch(train, 4)[0])))
        eval_images.append(epoch(val, 4)[0])
    assert not train_keys[0] & train_keys[1]
    assert (train_keys[0] | train_keys[1]) <= set(keys(dataset.images))
    # Eval: contiguous shards, no padding duplicates: their concatenation is exactly the dataset.
    assert [len(e) for e in eval_images] == [18, 19]
    assert torch.equal(torch.cat(eval_images), eval_set.images.float())


def test_device_path_and_dataloader_path_give_identical_batches():
    cfg = synthetic(crop_padding=2, hflip=True, random_resized_crop=True, image_size=6, eval_preset="crop_pct:0.75")
    on_device = build_loaders(dataclasses.replace(cfg, on_device="yes"), "cpu", seed=1)
    via_workers = build_loaders(dataclasses.replace(cfg, on_device="no", workers=2), "cpu", seed=1)
    for a, b in zip(on_device[:2], via_workers[:2]):
        xa, ya = epoch(a, 3)
        xb, yb = epoch(b, 3)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert xa.shape[-2:] == (6, 6)  # eval: shorter side 8 -> centre 6


@pytest.mark.parametrize("on_device, workers", [("yes", 0), ("no", 0), ("no", 2)])
def test_iter_from_continues_an_epoch_with_the_batches_it_would_have_given(on_device, workers):
    # a checkpoint saved mid-epoch resumes there: the rest of the epoch, without reading the first batches
    cfg = synthetic(crop_padding=2, hflip=True, color_jitter=0.2, random_resized_crop=True, image_size=6,
                    on_device=on_device, workers=workers)
    train, _, _ = build_loaders(cfg, "cpu", seed=4)
    train.set_epoch(2)
    whole = list(train)
    rest = list(train.iter_from(4))
    assert len(rest) == len(whole) - 4
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole[4:], rest))
    assert len(list(train)) == len(whole)  # a plain iteration is the whole epoch again
    assert list(train.iter_from(len(train))) == []


def test_mnist_style_sets_stay_one_channel(tmp_path):
    write_mnist(tmp_path, num_train=20, num_test=6)
    cfg = DataConfig(name="mnist", root=str(tmp_path), batch_size=4, eval_batch_size=4, mean=(0.1307,),
                     std=(0.3081,))
    train, val, info = build_loaders(cfg, "cpu")
    assert info.in_chans == 1 and info.train_size == 20 and info.eval_size == 6
    assert next(iter(train))[0].shape == (4, 1, 28, 28)
    _, val, info3 = build_loaders(dataclasses.replace(cfg, in_chans=3, mean=(0.5,)), "cpu")
    assert info3.in_chans == 3 and next(iter(val))[0].shape == (4, 3, 28, 28)
    with pytest.raises(ValueError, match="data.num_classes=5 but the dataset has 10 classes"):
        build_loaders(dataclasses.replace(cfg, num_classes=5), "cpu")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_default_config_loads_real_fashion_mnist():
    train, val, info = build_loaders(DataConfig(batch_size=500), "cpu")
    assert (info.train_size, info.eval_size, info.in_chans, info.num_classes) == (60000, 10000, 1, 10)
    assert (len(train), len(val)) == (120, 40)
    images, labels = next(iter(val))
    assert images.shape == (256, 1, 28, 28) and labels.max() < 10


# ------------------------------------------------------------------------------------------- folder path
@pytest.fixture
def folder_root(tmp_path):
    for split, count in (("train", 6), ("val", 3)):
        for cls in ("cat", "dog"):
            for i in range(count):
                size = (30 + 7 * i, 24 + 3 * i)  # varied sizes, as in real folders
                write_image(tmp_path / split / cls / f"{i}.jpg", size=size, seed=i)
    return tmp_path


def test_folder_loader_crops_to_size_and_ignores_worker_count(folder_root):
    cfg = DataConfig(name="folder", root=str(folder_root), image_size=16, random_resized_crop=True,
                     eval_preset="crop_pct:0.8", batch_size=4, eval_batch_size=5, workers=0)
    train0, val0, info = build_loaders(cfg, "cpu", seed=2)
    train2, val2, _ = build_loaders(dataclasses.replace(cfg, workers=2), "cpu", seed=2)
    assert info.classes == ["cat", "dog"] and info.in_chans == 3 and (len(train0), len(val0)) == (3, 2)
    x0, y0 = epoch(train0, 1)
    x2, y2 = epoch(train2, 1)
    assert x0.shape == (12, 3, 16, 16) and torch.equal(x0, x2) and torch.equal(y0, y2)
    assert not torch.equal(epoch(train2, 2)[0], x2)
    v0, labels = epoch(val0, 0)
    assert v0.shape == (6, 3, 16, 16) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(epoch(val2, 0)[0], v0)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_loader_workers_outlive_a_signal_to_the_process_group(folder_root, signum):
    # Ctrl-C and SLURM's SIGTERM reach the workers too; the training process must get its epoch's batches until
    # it has saved its checkpoint at the next step
    cfg = DataConfig(name="folder", root=str(folder_root), image_size=16, batch_size=2, workers=2)
    train, _, _ = build_loaders(cfg, "cpu", seed=2)
    train.set_epoch(0)
    batches = iter(train)
    first = next(batches)
    workers = multiprocessing.active_children()
    assert workers
    for worker in workers:  # from another process, as from SLURM or a terminal
        subprocess.run(["kill", f"-{signum.name[3:]}", str(worker.pid)], check=True)
    time.sleep(0.5)
    assert len([first, *batches]) == len(train)



def _idle_loader_worker(ready):
    _init_loader_worker(0)
    ready.set()
    time.sleep(60)


def test_a_loader_worker_still_ends_on_a_sigterm_from_the_training_process():
    # multiprocessing's terminate(), also at interpreter exit for daemonic workers: ignoring it would hang the exit
    context = multiprocessing.get_context("fork")
    ready = context.Event()  # the worker's signal handling is set up (a fork of a large process can take a while)
    worker = context.Process(target=_idle_loader_worker, args=(ready,), daemon=True)
    # Forked with SIGINT and SIGTERM blocked, as Loader.iter_from starts its workers: threads that torch's fork
    # handlers start in the child inherit the mask, so only the worker's SIGTERM thread takes the signal.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        worker.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    assert ready.wait(30)
    subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # from elsewhere: ignored
    time.sleep(0.5)
    assert worker.is_alive()
    worker.terminate()
    worker.join(5)
    assert worker.exitcode == -signal.SIGTERM


@pytest.mark.parametrize("overrides", [dict(eval_preset="crop_pct:0.8", image_size=12), dict(image_size=10),
                                       dict(eval_preset="224_256", normalize="mean")])
def test_eval_loader_applies_the_configs_preprocess(folder_root, tmp_path, overrides):
    """Every eval batch is eval_preprocess(cfg) applied image by image, as inference applies it."""
    write_mnist(tmp_path / "mnist", num_train=4, num_test=3)
    configs = [DataConfig(name="folder", root=str(folder_root), workers=0, **overrides),
               DataConfig(name="mnist", root=str(tmp_path / "mnist"), val_split="test", in_chans=3, mean=(0.5,),
                          std=(0.25,), **overrides)]
    for cfg in configs:
        val, info = build_eval_loader(cfg, "cpu")
        pp = eval_preprocess(cfg, info.in_chans)
        expected = torch.stack([preprocess_image(image, pp) for image, _ in
                                (val.dataset[i] for i in range(len(val.dataset)))])
        assert torch.equal(epoch(val, 0)[0], expected)
    assert expected.shape[-1] == {"crop_pct:0.8": 12, "224_256": 224}.get(cfg.eval_preset, 28)  # mnist: as stored


def test_other_channel_counts_train_when_the_images_have_them():
    train, val, info = build_loaders(synthetic(in_chans=2, **RAW), "cpu")
    assert info.in_chans == 2 and next(iter(val))[0].shape[1] == 2 and next(iter(train))[0].shape[1] == 2


def test_skip_policy_drops_bad_images_in_eval_and_counts_them_across_workers(folder_root):
    """Evaluation drops a bad image (never counts a stand-in twice); the loader says how many it dropped."""
    (folder_root / "val" / "cat" / "1.jpg").write_bytes(b"")
    (folder_root / "val" / "dog" / "2.jpg").write_bytes(b"GIF89a but not really")
    cfg = DataConfig(name="folder", root=str(folder_root), image_size=8, batch_size=2, eval_batch_size=1,
                     workers=2, on_bad_image="skip", bad_image_cap=5)
    _, val, _ = build_loaders(cfg, "cpu")
    _, labels = epoch(val, 0)
    assert labels.tolist() == [0, 0, 1, 1]  # 1-image batches of a bad file are dropped whole
    assert val.skipped == 2 and val.dataset.bad_image_count == 2
    _, labels = epoch(val, 1)
    assert labels.tolist() == [0, 0, 1, 1] and val.skipped == 2  # counted per pass
    _, two_per_batch, _ = build_loaders(dataclasses.replace(cfg, eval_batch_size=2, workers=0), "cpu")
    _, labels = epoch(two_per_batch, 0)
    assert labels.tolist() == [0, 0, 1, 1] and two_per_batch.skipped == 2  # short batches
    _, strict, _ = build_loaders(dataclasses.replace(cfg, bad_image_cap=1), "cpu")
    with pytest.raises(TooManyBadImagesError, match="more than data.bad_image_cap=1"):  # re-raised from a worker
        epoch(strict, 0)


def test_skip_policy_substitutes_in_training(folder_root, caplog):
    (folder_root / "train" / "cat" / "1.jpg").write_bytes(b"")
    cfg = DataConfig(name="folder", root=str(folder_root), image_size=8, batch_size=12, workers=0,
                     on_bad_image="skip")
    train, _, _ = build_loaders(cfg, "cpu")
    with caplog.at_level(logging.WARNING, logger="deepres.data"):
        _, labels = epoch(train, 0)
    assert len(labels) == 12 and train.dataset.bad_image_count == 1
    assert caplog.text.count("stands in") == 1


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("overrides, message", [
    (dict(batch_size=200), "exceeds the 100 training images"),
    (dict(normalize="zscore"), "data.normalize expects one of 'meanstd', 'mean', got 'zscore'"),
    (dict(on_device="always"), "data.on_device expects one of 'auto', 'yes', 'no', got 'always'"),
    (dict(eval_preset="center"), "unknown data.eval_preset"),
    (dict(mean=(0.1, 0.2)), "data.mean has 2 values"),
    (dict(name="imagenet21k"), "data.name='imagenet21k': unknown dataset format; known: fashion_mnist, "),
])
def test_bad_config_values_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_loaders(synthetic(**overrides), "cpu")


def test_rank_and_on_device_errors(folder_root):
    with pytest.raises(ValueError, match="rank 2 is not in 0..world_size-1"):
        build_loaders(synthetic(), "cpu", rank=2, world_size=2)
    with pytest.raises(ValueError, match="on_device=yes needs an in-memory dataset"):
        build_loaders(DataConfig(name="folder", root=str(folder_root), on_device="yes"), "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_land_on_cuda(folder_root):
    for cfg in (synthetic(crop_padding=2), DataConfig(name="folder", root=str(folder_root), image_size=8,
                                                       batch_size=4, workers=0)):
        train, val, _ = build_loaders(cfg, "cuda")
        for loader in (train, val):
            images, labels = next(iter(loader))
            assert images.is_cuda and labels.is_cuda and images.dtype == torch.float32


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_image_in_a_worker_raises_the_same_one_line_error(folder_root, workers):
    """A worker's BadImageError reaches the caller as itself (type, path, reason), not a worker traceback."""
    bad = folder_root / "val" / "dog" / "1.jpg"
    bad.write_bytes(b"")
    cfg = DataConfig(name="folder", root=str(folder_root), image_size=8, batch_size=2, eval_batch_size=2,
                     workers=workers)
    _, val, _ = build_loaders(cfg, "cpu")
    with pytest.raises(BadImageError) as caught:
        epoch(val, 0)
    assert str(caught.value) == f"{bad}: zero bytes" and caught.value.path == str(bad)
    assert caught.value.reason == "zero bytes"
    strict = DataConfig(name="folder", root=str(folder_root), image_size=8, batch_size=2, eval_batch_size=2,
                        workers=workers,
                        on_bad_image="skip", bad_image_cap=0)
    _, val, _ = build_loaders(strict, "cpu")
    with pytest.raises(TooManyBadImagesError) as caught:
        epoch(val, 0)
    assert "\n" not in str(caught.value) and str(bad) in str(caught.value)
