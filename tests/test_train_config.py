"""Training config: YAML recipes, --set overrides, type and key errors, exact round trip."""
import json
from pathlib import Path

import pytest
import yaml

import deepres.data  # noqa: F401  (fills in the formats and the options each reads)
from deepres.core.config import (FORMAT_OPTIONS, RESUME_MAY_DIFFER, Config, apply_overrides, config_diff,
                                  config_from_dict, config_to_dict, config_to_yaml, list_recipes, load_config)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def recipe(tmp_path):
    return write(tmp_path / "demo.yaml", """
model: {name: resnet20, kwargs: {shortcut: A}}
data: {name: cifar10, crop_padding: 4, mean: [0.49, 0.48, 0.45]}
optim: {lr: 0.1, nesterov: true, weight_decay: 5e-4}
schedule: {name: multistep, milestones: [32000, 48000]}
train: {max_iters: 64000}
expect: {accuracy: 91.25, note: He et al. 2015 Table 6}
""")


def test_yaml_recipe_loads_with_types_and_defaults(recipe):
    cfg = load_config(recipe)
    assert cfg.model.name == "resnet20" and cfg.model.kwargs == {"shortcut": "A"}
    assert cfg.data.mean == (0.49, 0.48, 0.45)  # tuple field from a YAML list
    assert cfg.optim.weight_decay == 5e-4 and isinstance(cfg.optim.weight_decay, float)  # "5e-4" is a YAML str
    assert cfg.schedule.milestones == [32000, 48000]
    assert cfg.train.epochs == Config().train.epochs  # untouched default
    assert cfg.run.name == "demo" and cfg.run.recipe == str(recipe)


def test_set_overrides_parse_values_with_yaml(recipe):
    cfg = load_config(recipe, ["optim.lr=0.05", "train.amp=bf16", "schedule.milestones=[10, 20]",
                               "model.kwargs.bn_after_add=true", "model.bn_momentum=dynamic",
                               "optim.eps=1e-6", "run.name=2024", "train.grad_clip_norm=1", "optim.alpha=null"])
    assert cfg.optim.lr == 0.05 and cfg.train.amp == "bf16" and cfg.schedule.milestones == [10, 20]
    assert cfg.model.kwargs == {"shortcut": "A", "bn_after_add": True}  # merged into the free dict
    assert cfg.model.bn_momentum == "dynamic" and cfg.optim.eps == 1e-6
    assert cfg.run.name == "2024"  # str field keeps the typed text
    assert cfg.train.grad_clip_norm == 1.0 and isinstance(cfg.train.grad_clip_norm, float)  # int accepted
    assert cfg.optim.alpha is None


@pytest.mark.parametrize("override, words", [
    ("train.epochs=1.5", ["train.epochs", "int", "1.5"]),
    ("train.channels_last=1", ["train.channels_last", "bool", "1"]),
    ("optim.lr=fast", ["optim.lr", "float", "'fast'"]),
    ("optim.betas=[0.9]", ["optim.betas", "list of 2", "[0.9]"]),
    ("data.mean=0.5", ["data.mean", "list of float", "0.5"]),
    ("train.amp=fp32", ["train.amp", "'bf16'", "'fp32'"]),
    ("model.bn_momentum=[1]", ["model.bn_momentum", "float or str or null"]),
    ("schedule.milestones=[1, x]", ["schedule.milestones[1]", "int", "'x'"]),
])
def test_wrong_types_name_key_type_and_value(recipe, override, words):
    with pytest.raises(ValueError) as err:
        load_config(recipe, [override])
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_unknown_set_key_names_dotted_key_and_suggests(recipe):
    with pytest.raises(KeyError) as err:
        load_config(recipe, ["optim.weight_decy=0"])
    msg = str(err.value)
    assert "optim.weight_decy" in msg and "--set" in msg and "optim.weight_decay" in msg
    with pytest.raises(KeyError) as err:
        load_config(recipe, ["train.lr=0.1"])  # right leaf, wrong section
    assert "optim.lr" in str(err.value)
    with pytest.raises(KeyError, match="unknown config key 'nope'"):
        load_config(recipe, ["nope=1"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        load_config(recipe, ["optim.lr"])


def test_unknown_yaml_key_at_depth_names_file(tmp_path):
    bad = write(tmp_path / "bad.yaml", "data:\n  crop_paddng: 4\n")
    with pytest.raises(KeyError) as err:
        load_config(bad)
    msg = str(err.value)
    assert str(bad) in msg and "data.crop_paddng" in msg and "data.crop_padding" in msg
    with pytest.raises(ValueError, match="optim must be a mapping"):
        load_config(write(tmp_path / "flat.yaml", "optim: 0.1\n"))
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(write(tmp_path / "broken.yaml", "model: {name: [\n"))


def test_range_validation(recipe):
    with pytest.raises(ValueError, match="model.bn_momentum='fast'"):
        load_config(recipe, ["model.bn_momentum=fast"])
    with pytest.raises(ValueError, match="train.grad_accum_steps"):
        load_config(recipe, ["train.grad_accum_steps=0"])
    with pytest.raises(ValueError, match="optim.nesterov"):
        load_config(recipe, ["optim.momentum=0"])


@pytest.mark.parametrize("value", ["1.5", "1.0", "-0.1"])
def test_momentum_outside_0_1_is_refused(recipe, value):
    with pytest.raises(ValueError, match=rf"optim.momentum={value}: must be in \[0, 1\)"):
        load_config(recipe, [f"optim.momentum={value}"])


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "{}\n"])
def test_an_empty_recipe_is_an_error_naming_the_file(tmp_path, text):
    path = write(tmp_path / "empty.yaml", text)
    with pytest.raises(ValueError, match=rf"{path}: the recipe sets nothing"):
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=0", "data.batch_size=0: must be >= 1$"),
    ("data.workers=-1", "data.workers=-1: must be >= 0$"),
    ("data.bad_image_cap=-1", "data.bad_image_cap=-1: must be >= 0$"),
    ("data.max_image_pixels=0", "data.max_image_pixels=0: must be >= 1$"),
    ("data.limit_val=-2", r"data.limit_val=-2: must be >= 0 \(0 = all\)$"),
    ("data.scale_range=[2.0, 0.5]", r"data.scale_range=\(2.0, 0.5\): must be \[low, high\] with 0 < low <= high"),
    ("data.eval_preset=center", "unknown data.eval_preset 'center'"),
    ("data.eval_preset=crop_pct:1.5", "crop_pct must be a number in"),
    ("data.normalize=zscore", "data.normalize expects one of 'meanstd', 'mean'"),
])
def test_data_section_is_checked_at_load_time(recipe, override, message):
    with pytest.raises(ValueError, match=message):
        load_config(recipe, [override])
    with pytest.raises(ValueError, match=message):
        apply_overrides(Config(), [override])
    data = config_to_dict(Config())
    key, value = override.removeprefix("data.").split("=")
    data["data"][key] = yaml.safe_load(value)
    if key in FORMAT_OPTIONS:  # a stored config's option its format does not read goes back to its default
        data["data"]["name"] = "pairs"
    with pytest.raises(ValueError, match=message):
        config_from_dict(data)


def test_a_rule_broken_in_a_recipe_names_the_file_and_in_a_set_names_the_option(tmp_path, recipe):
    base = write(tmp_path / "base.yaml", "optim: {momentum: 1.5}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\noptim: {lr: 0.02}\n")
    with pytest.raises(ValueError, match=rf"^{base}: optim.momentum=1.5: must be in \[0, 1\)$"):
        load_config(child)
    with pytest.raises(ValueError, match=r"^--set eval.scales=\[224, 5000\]: eval.scales=\[224, 5000\]: must be "
                                         r"pixel sizes in 1..4096$"):
        load_config(recipe, ["eval.scales=[224, 5000]"])
    with pytest.raises(ValueError, match=r"^--set train.ema_decay=1: train.ema_decay=1.0: must be in \[0, 1\) "
                                         r"\(0 = off\)$"):
        apply_overrides(Config(), ["train.ema_decay=1"])
    with pytest.raises(ValueError, match=r"expect.accuracy=101.0: must be a percentage$"):
        load_config(recipe, ["expect.accuracy=101"])


def test_a_rule_across_fields_names_the_recipe(recipe):
    with pytest.raises(ValueError, match=rf"^{recipe}: schedule.warm_start_lr=0.0: must be > 0 when "
                                         r"warm_start_iters > 0$"):
        load_config(recipe, ["schedule.warm_start_iters=10"])
    with pytest.raises(ValueError, match=rf"^{recipe}: train.epochs=0: must be >= 1 \(or set train.max_iters\)$"):
        load_config(recipe, ["train.epochs=0", "train.max_iters=0"])
    assert load_config(recipe, ["train.epochs=0"]).train.max_iters == 64000  # max_iters decides


def test_only_keys_that_leave_the_weights_alone_may_change_on_resume():
    assert set(RESUME_MAY_DIFFER) == {
        "run", "expect", "eval", "train.progress", "train.log_every_iters", "train.eval_every_epochs",
        "train.checkpoint_every_iters", "train.calibrate_int8", "train.int8_calibration_images",
        "train.int8_agreement_images", "data.root", "data.workers", "data.eval_batch_size"}


def test_base_inheritance_merges_and_reports_child_file(tmp_path):
    write(tmp_path / "base.yaml", "optim: {lr: 0.1, momentum: 0.9}\ntrain: {epochs: 10}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\noptim: {lr: 0.02}\n")
    cfg = load_config(child)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.train.epochs) == (0.02, 0.9, 10)
    write(tmp_path / "child2.yaml", "base: base.yaml\ntrain: {epochz: 1}\n")
    with pytest.raises(KeyError, match="child2.yaml"):
        load_config(tmp_path / "child2.yaml")
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_a_mapping_with_delete_replaces_the_one_it_lands_on_instead_of_merging(recipe, tmp_path):
    """mmengine's `_delete_: true`: in a --set value or a derived recipe, the mapping replaces the base's (another
    backbone's model.kwargs) instead of being merged into it; without it, mappings merge as before."""
    merged = load_config(recipe, ["model.kwargs={width: 0.5}"])
    assert merged.model.kwargs == {"shortcut": "A", "width": 0.5}
    replaced = load_config(recipe, ["model.kwargs={_delete_: true, width: 0.5}"])
    assert replaced.model.kwargs == {"width": 0.5}
    assert load_config(recipe, ["model.kwargs={_delete_: true}"]).model.kwargs == {}
    child = write(tmp_path / "child.yaml", f"base: {recipe.name}\nmodel: {{kwargs: {{_delete_: true, se: true}}}}\n")
    assert load_config(child).model.kwargs == {"se": True}
    orphan = write(tmp_path / "orphan.yaml", "model: {name: resnet20, kwargs: {_delete_: true, se: true}}\n")
    assert load_config(orphan).model.kwargs == {"se": True}  # nothing to replace: the mapping as written


def test_missing_recipe_is_file_not_found():
    with pytest.raises(FileNotFoundError, match="no/such/recipe"):
        load_config("no/such/recipe")


def test_round_trip_exact_through_dict_yaml_and_json(recipe):
    cfg = load_config(recipe, ["model.bn_momentum=0.01", "optim.betas=[0.8, 0.95]", "eval.scales=[224, 256]"])
    d = config_to_dict(cfg)
    assert config_from_dict(d) == cfg
    assert config_from_dict(yaml.safe_load(config_to_yaml(cfg))) == cfg
    assert config_from_dict(json.loads(json.dumps(d))) == cfg
    assert config_from_dict(config_to_dict(Config())) == Config()


def test_config_diff_lists_changed_leaves(recipe):
    a = load_config(recipe)
    b = load_config(recipe, ["optim.lr=0.2", "run.name=other", "model.kwargs.shortcut=B"])
    assert config_diff(a, b, ignore=("run",)) == [("model.kwargs", {"shortcut": "A"}, {"shortcut": "B"}),
                                                  ("optim.lr", 0.1, 0.2)]


def test_every_shipped_recipe_loads_and_states_its_expectation():
    names = list_recipes()
    assert "fashion_mnist/resnet20" in names and "cifar10/resnet110" in names
    from deepres.models import list_models
    for name in names:
        cfg = load_config(name)
        assert cfg.expect.note.strip() and 0 < cfg.expect.accuracy <= 100, name
        assert cfg.run.name == name.replace("/", "-")
        if list_models():  # the zoo lands separately; only then can names be checked
            assert cfg.model.name in list_models(), f"{name}: model {cfg.model.name!r} is not registered"


def test_yaml_error_in_a_set_value_names_the_option(recipe):
    # a PyYAML traceback without the key before (issue 11)
    with pytest.raises(ValueError, match=r"--set schedule.milestones=\[1, 2: the value of schedule.milestones is not "):
        load_config(recipe, ["schedule.milestones=[1, 2"])


def test_a_recipe_setting_an_option_its_format_does_not_read_is_refused(recipe, tmp_path):
    bad = write(tmp_path / "bad.yaml", f"base: {recipe}\ndata: {{class_depth: 2}}\n")
    with pytest.raises(ValueError, match=r"data.class_depth=2: data.name=cifar10 does not read it \(read by folder, "
                                         r"imagenet\)"):
        load_config(bad)
    with pytest.raises(ValueError, match="data.coarse_labels=True: data.name=cifar10 does not read it"):
        load_config(recipe, ["data.coarse_labels=true"])
    assert load_config(recipe, ["data.name=cifar100", "data.coarse_labels=true"]).data.coarse_labels


def test_every_shipped_recipe_sets_only_options_its_format_reads():
    for name in list_recipes():
        load_config(name)  # raises naming the recipe, the key and the format otherwise


def test_a_stored_config_keeps_loading_and_a_format_switch_drops_the_old_formats_options():
    stored = config_to_dict(Config())
    stored["data"].update(name="cifar10", class_depth=2)  # written before the formats listed their options
    assert config_from_dict(stored, where="old checkpoint").data.class_depth == 0  # cifar10 never read it
    imagenet = apply_overrides(Config(), ["data.name=imagenet", "data.val_ground_truth=gt.txt", "data.class_depth=1"])
    # `deepres eval --dataset folder` on it: class_depth travels (folder reads it), val_ground_truth does not
    folder = apply_overrides(imagenet, ["data.name=folder"])
    assert folder.data.class_depth == 1 and folder.data.val_ground_truth == ""
    with pytest.raises(ValueError, match="data.val_ground_truth='gt.txt': data.name=folder does not read it"):
        apply_overrides(imagenet, ["data.name=folder", "data.val_ground_truth=gt.txt"])


def test_eval_preset_names_say_their_crop_and_the_old_names_still_load(tmp_path):
    # Issue 28: "224_256" was a centre 224 of 256 here but means "evaluate at 256" in Assemble-ResNet's
    # `imagenet_224_256`; each name now says its crop first, and stored configs with the old names mean the same.
    from deepres.core.preprocess import EVAL_PRESET_ALIASES, EVAL_PRESETS, parse_eval_preset
    for name, (resize, crop) in EVAL_PRESETS.items():
        assert name == f"crop{crop}_resize{resize}" and parse_eval_preset(name, 224) == (resize, crop)
    assert {old: parse_eval_preset(old, 224) for old in EVAL_PRESET_ALIASES} == {
        "224_256": (256, 224), "224_256a": (257, 256), "256_292": (292, 256)}
    stored = config_to_dict(Config())
    stored["data"].update(name="imagenet", image_size=224, eval_preset="224_256a")  # a run from before the rename
    old = config_from_dict(stored, where="old run")
    assert old.data.eval_preset == "224_256a" and config_to_dict(old) == stored  # kept as written
    base = write(tmp_path / "old.yaml", 'data: {name: imagenet, eval_preset: "224_256"}\n'
                                        'expect: {accuracy: 76.1, note: n}\n')
    assert parse_eval_preset(load_config(base).data.eval_preset, 224) == \
        parse_eval_preset(load_config(base, ["data.eval_preset=crop224_resize256"]).data.eval_preset, 224)
    with pytest.raises(ValueError, match="expected none, crop224_resize256, crop256_resize257, crop256_resize292"):
        load_config(base, ["data.eval_preset=256_224"])
