"""The dataset-format registry: lookups, the facts each built-in record states (checked against what its reader
returns), in-memory vs file formats through the loaders, and the config's data.name and format options checked
against it."""
import dataclasses
import subprocess
import sys

import pytest

from data_helpers import write_cifar10, write_cifar100, write_image, write_mnist
from deepres.core.config import FORMAT_OPTIONS, Config, apply_overrides, config_from_dict, config_to_dict, load_config
from deepres.data import (DataConfig, build_datasets, build_loaders, eval_preprocess, format_shape,
                          get_format, list_formats, pack_dataset, register_format, registry, resolve_root, stored_side)
from deepres.data.imagenet_classes import imagenet_class_names

WRITERS = {"mnist": write_mnist, "fashion_mnist": write_mnist, "cifar10": write_cifar10, "cifar100": write_cifar100}


@pytest.fixture
def formats(monkeypatch):
    """Registrations made in the test end with it."""
    monkeypatch.setattr(registry, "_formats", dict(registry._formats))


def test_a_format_registered_at_runtime_is_a_config_data_name(formats):
    unknown = r"data.name='emnist': unknown dataset format; known: fashion_mnist, mnist, .*, aircraft$"
    with pytest.raises(ValueError, match=unknown):
        load_config("fashion_mnist/resnet20", ["data.name=emnist"])
    with pytest.raises(ValueError, match=unknown):
        build_datasets(DataConfig(name="emnist"))
    register_format(dataclasses.replace(get_format("mnist"), name="emnist"))
    assert load_config("fashion_mnist/resnet20", ["data.name=emnist"]).data.name == "emnist"
    assert apply_overrides(Config(), ["data.name=emnist"]).data.name == "emnist"


def test_unknown_data_name_is_one_line_naming_the_file_or_option(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {name: imagenet21k}\n")
    with pytest.raises(ValueError, match=rf"^{recipe}: data.name='imagenet21k': unknown dataset format; known: "
                                         r"fashion_mnist, mnist, cifar10, .*, aircraft$"):
        load_config(recipe)
    with pytest.raises(ValueError, match=r"^--set data.name=x: data.name='x': unknown dataset format; known: "):
        load_config("fashion_mnist/resnet20", ["data.name=x"])
    stored = config_to_dict(Config())
    stored["data"]["name"] = "x"
    with pytest.raises(ValueError, match=r"^run/config.yaml: data.name='x': unknown dataset format"):
        config_from_dict(stored, where="run/config.yaml")


def test_deepres_train_refuses_an_unknown_data_name_in_a_fresh_process(tmp_path):
    # Nothing imported deepres.data before the command did: its imports alone hand the registry to the config.
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: fashion_mnist/resnet20\ndata: {name: imagenet21k}\n")
    done = subprocess.run([sys.executable, "-m", "deepres", "train", str(recipe)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"deepres train: error: {recipe}: data.name='imagenet21k': unknown dataset "
                                        f"format; known: {', '.join(list_formats())}"]


def test_a_format_option_its_format_does_not_read_is_refused(formats):
    register_format(dataclasses.replace(get_format("folder"), name="trees", options=("class_depth",)))
    register_format(dataclasses.replace(get_format("cifar100"), name="cifar100_sets", options=("coarse_labels",)))
    assert load_config("fashion_mnist/resnet20", ["data.name=trees", "data.class_depth=2"]).data.class_depth == 2
    with pytest.raises(ValueError, match=r"data.coarse_labels=True: data.name=trees does not read it \(read by "
                                         r"(.*, )?cifar100_sets\)$"):
        load_config("fashion_mnist/resnet20", ["data.name=trees", "data.coarse_labels=true"])
    with pytest.raises(ValueError, match=r"data.synthetic_size=\(4, 2\): data.name=trees does not read it"):
        build_datasets(DataConfig(name="trees", synthetic_size=(4, 2)))
    # an option set back to its default is not "set"; a format that declares nothing reads every option
    assert load_config("fashion_mnist/resnet20", ["data.name=trees", "data.coarse_labels=false"])
    register_format(dataclasses.replace(get_format("folder"), name="anything", options=None))
    assert load_config("fashion_mnist/resnet20", ["data.name=anything", "data.coarse_labels=true"])


def test_a_record_declares_only_format_options(formats):
    with pytest.raises(ValueError, match=r"dataset format 'trees': options must be data format options "
                                         r"\(class_depth, .*\), got 'batch_size'"):
        register_format(dataclasses.replace(get_format("folder"), name="trees", options=("batch_size",)))
    assert "class_depth" in FORMAT_OPTIONS and "batch_size" not in FORMAT_OPTIONS


def test_get_format_unknown_names_the_known_ones():
    with pytest.raises(KeyError, match=r"unknown dataset format 'imagenet21k'; known formats: fashion_mnist, .*"
                                       r"synthetic"):
        get_format("imagenet21k")


def test_list_formats_filters_by_record_fields():
    assert list_formats(packable=True) == ["folder", "imagenet", "list"]
    assert list_formats(in_memory=True) == ["fashion_mnist", "mnist", "cifar10", "cifar100", "synthetic"]
    assert list_formats(fetch="fashion-mnist") == ["fashion_mnist"]


def test_only_file_formats_are_packed(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(ValueError, match=r"packing reads file datasets \(folder, imagenet, list\)"):
        pack_dataset(DataConfig(name="cifar10", root=str(tmp_path)), tmp_path / "packed")


def test_register_format_refuses_a_second_record_or_an_unknown_task(formats):
    with pytest.raises(ValueError, match="'mnist' is already registered"):
        register_format(get_format("mnist"))
    with pytest.raises(ValueError, match="task must be one of classification, segmentation, got 'depth'"):
        register_format(dataclasses.replace(get_format("mnist"), name="mnist_depth", task="depth"))
    extra = register_format(dataclasses.replace(get_format("mnist"), name="emnist"))
    assert get_format("emnist") is extra and list_formats()[-1] == "emnist"


@pytest.mark.parametrize("cfg, shape", [
    (DataConfig(name="fashion_mnist"), (10, 1, ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                                 "Shirt", "Sneaker", "Bag", "Ankle boot"])),
    (DataConfig(name="mnist"), (10, 1, [str(d) for d in range(10)])),
    (DataConfig(name="cifar10"), (10, 3, ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                          "ship", "truck"])),
    (DataConfig(name="cifar100"), (100, 3, None)),
    (DataConfig(name="cifar100", coarse_labels=True), (20, 3, None)),
    (DataConfig(name="imagenet"), (1000, 3, imagenet_class_names())),
    (DataConfig(name="folder"), None),
    (DataConfig(name="list"), None),
    (DataConfig(name="packed"), None),
    (DataConfig(name="synthetic", num_classes=4, in_chans=1), None),  # the config, not the format, decides
])
def test_format_shape(cfg, shape):
    assert format_shape(cfg) == shape


@pytest.mark.parametrize("name, options", [("fashion_mnist", {}), ("mnist", {}), ("cifar10", {}), ("cifar100", {}),
                                           ("cifar100", {"coarse_labels": True})])
def test_in_memory_records_match_what_their_reader_returns(tmp_path, name, options):
    WRITERS[name](tmp_path)
    cfg = DataConfig(name=name, root=str(tmp_path), val_split="test", **options)
    num_classes, in_chans, names = format_shape(cfg)
    for split in build_datasets(cfg):
        assert split.images.shape[1:] == (in_chans, stored_side(cfg), stored_side(cfg))
        assert split.num_classes == num_classes
        assert names is None or split.classes == names


def test_synthetic_stored_side_follows_the_config():
    cfg = DataConfig(name="synthetic", synthetic_image_size=12, synthetic_size=(4, 2))
    train, _ = build_datasets(cfg)
    assert stored_side(cfg) == 12 and train.images.shape[-1] == 12
    assert (eval_preprocess(cfg, 3).resize, eval_preprocess(cfg, 3).crop_size) == (12, 12)
    assert stored_side(DataConfig(name="folder")) is None


def test_default_root_comes_from_the_fetch_key():
    with pytest.raises(ValueError, match=r"data.name=mnist has no default location; set data.root=DIR "
                                         r"\(`deepres data get mnist --dest DIR` fetches it\)"):
        resolve_root(DataConfig(name="mnist"))
    with pytest.raises(ValueError, match=r"data.name=cifar10 has no default location; set data.root=DIR$"):
        resolve_root(DataConfig(name="cifar10"))


def test_in_memory_format_batches_on_the_device_and_file_format_decodes(tmp_path):
    write_mnist(tmp_path / "mnist")
    for split, count in (("train", 4), ("val", 2)):
        for cls in ("cat", "dog"):
            for i in range(count):
                write_image(tmp_path / "folder" / split / cls / f"{i}.jpg", size=(12 + i, 10), seed=i)
    mnist = DataConfig(name="mnist", root=str(tmp_path / "mnist"), val_split="test", batch_size=4, workers=0)
    folder = DataConfig(name="folder", root=str(tmp_path / "folder"), image_size=8, batch_size=4, workers=0)
    train, val, _ = build_loaders(mnist, "cpu")
    assert train.on_device and val.on_device and train.item_transform is None
    assert next(iter(val))[0].shape[-2:] == (28, 28)  # as stored
    train, val, _ = build_loaders(folder, "cpu")
    assert not train.on_device and next(iter(val))[0].shape[-2:] == (8, 8)  # decoded and resized per image
    message = r"on_device=yes needs an in-memory dataset \(fashion_mnist, mnist, cifar10, cifar100, synthetic\)"
    with pytest.raises(ValueError, match=message):
        build_loaders(dataclasses.replace(folder, on_device="yes"), "cpu")
