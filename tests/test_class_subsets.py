"""data.keep_classes and data.labels_per_class: class subsets and few-label training sets, in memory and from
files, the same draw for the same seed, and clear errors."""
import pytest
import torch
from data_helpers import write_image

from deepres.core.config import DataConfig, validate_data_config
from deepres.data import build_datasets, build_eval_dataset, format_shape


def test_keep_classes_renumbers_in_the_given_order_in_both_splits():
    cfg = DataConfig(name="synthetic", synthetic_size=(200, 100), keep_classes=[7, 2, 4])
    train, val = build_datasets(cfg)
    full_train, _ = build_datasets(DataConfig(name="synthetic", synthetic_size=(200, 100)))
    assert train.classes == [full_train.classes[i] for i in (7, 2, 4)] and val.classes == train.classes
    wanted = torch.isin(full_train.labels, torch.tensor([7, 2, 4]))
    assert torch.equal(train.images, full_train.images[wanted])
    remap = {7: 0, 2: 1, 4: 2}
    assert train.labels.tolist() == [remap[x] for x in full_train.labels[wanted].tolist()]
    assert set(val.labels.tolist()) <= {0, 1, 2}


def test_labels_per_class_draws_n_images_of_each_class_by_seed():
    cfg = DataConfig(name="synthetic", synthetic_size=(400, 50), labels_per_class=5, subset_seed=3)
    train, val = build_datasets(cfg)
    assert train.labels.bincount().tolist() == [5] * 10 and len(val) == 50  # the eval split is untouched
    again, _ = build_datasets(cfg)
    other, _ = build_datasets(DataConfig(name="synthetic", synthetic_size=(400, 50), labels_per_class=5,
                                         subset_seed=4))
    assert torch.equal(train.images, again.images) and not torch.equal(train.images, other.images)
    with pytest.raises(ValueError, match="labels_per_class=100 but class"):
        build_datasets(DataConfig(name="synthetic", synthetic_size=(400, 50), labels_per_class=100))


def test_fashion_mnist_halves_as_the_transfer_study_uses_them():
    cfg = DataConfig(name="fashion_mnist", keep_classes=[5, 6, 7, 8, 9], labels_per_class=50, limit_val=2000)
    train, val = build_datasets(cfg)
    assert train.classes == ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert train.labels.bincount().tolist() == [50] * 5 and val.num_classes == 5
    assert format_shape(cfg) == (5, 1, train.classes)  # a model built without the data gets 5 outputs
    assert len(build_eval_dataset(cfg, train.classes)) == 2000  # evaluating the trained model: its classes
    with pytest.raises(ValueError, match="trained"):
        build_eval_dataset(cfg, ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"])
    by_name = DataConfig(name="fashion_mnist", keep_classes=["Bag", "Sandal"], limit_val=100)
    assert build_datasets(by_name)[0].classes == ["Bag", "Sandal"]


def test_file_datasets_keep_classes_and_labels_too(tmp_path):
    for split in ("train", "val"):
        for name in ("ant", "bee", "cat"):
            for i in range(4):
                write_image(tmp_path / split / name / f"{i}.png", seed=i)
    cfg = DataConfig(name="folder", root=str(tmp_path), keep_classes=["cat", "ant"], labels_per_class=2)
    train, val = build_datasets(cfg)
    assert train.classes == ["cat", "ant"] and train.targets.count(0) == 2 and train.targets.count(1) == 2
    assert all(("/cat/" in p) == (y == 0) for p, y in train.samples)
    assert len(val) == 8 and val.classes == ["cat", "ant"]


def test_bad_subsets_are_named():
    with pytest.raises(ValueError, match="'Unicorn' is neither"):
        build_datasets(DataConfig(name="fashion_mnist", keep_classes=["Unicorn"]))
    with pytest.raises(ValueError, match="12 is neither"):
        build_datasets(DataConfig(name="fashion_mnist", keep_classes=[12]))
    with pytest.raises(ValueError, match="twice"):
        validate_data_config(DataConfig(keep_classes=[1, 1]))
    with pytest.raises(ValueError, match="labels_per_class"):
        validate_data_config(DataConfig(labels_per_class=-1))
