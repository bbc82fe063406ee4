"""deepres.inference: every input kind, batching, bad files, features, and init_model from every source.

The Fashion-MNIST test trains a ResNet-20 for a few steps on the real data and checks that inference_model on
PNG files gives exactly the predictions of the evaluation loader path (`deepres eval`)."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import FASHION_MNIST_DIR, random_pixels, write_image
from PIL import Image

from deepres import extract_feat, inference_model, init_model
from deepres.data import BadImageError, FASHION_MNIST_CLASSES, build_loaders, read_fashion_mnist
from deepres.data.imagenet_classes import imagenet_class_names, imagenet_synsets
from deepres.core.device import auto_dtype
from deepres.inference import Predictor, Preprocess
from deepres.models import create_model


@pytest.fixture(scope="module")
def model():
    """A random-weight CIFAR ResNet-20 (3 channels, 10 classes) seeing 32x32 images."""
    torch.manual_seed(0)
    return init_model("resnet20")


def scores(result):
    return np.array(result["top_k_scores"])


def test_model_name_gives_eval_model_with_preprocess_and_names(model):
    assert isinstance(model, Predictor) and not model.model.training
    assert model.preprocess == Preprocess(resize=32, crop_size=32, in_chans=3)
    assert model.class_names == [str(i) for i in range(10)]
    assert model.source["source"] == "model" and model.config is None


def test_every_input_kind_gives_the_same_prediction(model, tmp_path):
    rgb = random_pixels(32, 32, seed=1)  # model size: no resize, so float and uint8 paths agree exactly
    path = write_image(tmp_path / "rgb.png", rgb)
    kinds = {
        "path": path, "str": str(path), "pil": Image.fromarray(rgb), "numpy": rgb,
        "numpy_rgba": np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]),
        "tensor_uint8": torch.from_numpy(rgb).permute(2, 0, 1),
        "tensor_float": torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
    }
    results = {kind: inference_model(model, item, top_k=10) for kind, item in kinds.items()}
    reference = results["numpy"]
    assert results["path"]["path"] == str(path) and "path" not in reference
    for kind, result in results.items():
        assert result["top_k_labels"] == reference["top_k_labels"], kind
        np.testing.assert_allclose(scores(result), scores(reference), atol=1e-5, err_msg=kind)
    assert abs(sum(reference["top_k_scores"]) - 1) < 1e-5  # top-10 of 10 classes: a full softmax
    assert reference["pred_label"] == reference["top_k_labels"][0]
    assert reference["pred_class"] == model.class_names[reference["pred_label"]]


def test_gray_inputs_agree_and_are_resized(model, tmp_path):
    gray = random_pixels(45, 60, channels=1, seed=2)  # resized to 32 x 42, centre 32 x 32
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    kinds = [path, Image.fromarray(gray, mode="L"), gray, gray[:, :, None], torch.from_numpy(gray)[None],
             np.repeat(gray[:, :, None], 3, axis=2)]
    results = [inference_model(model, item, top_k=3) for item in kinds]
    for result in results[1:]:
        assert result["top_k_labels"] == results[0]["top_k_labels"]
        np.testing.assert_allclose(scores(result), scores(results[0]), atol=1e-5)


def test_list_folder_and_4d_tensor(model, tmp_path):
    folder = tmp_path / "images"
    paths = [write_image(folder / name, size=(40, 36), seed=i)
             for i, name in enumerate(["b.png", "a.jpg", "sub/c.png", "sub/deeper/d.bmp"])]
    (folder / "notes.txt").write_text("not an image")
    from_folder = inference_model(model, folder)
    assert [r["path"] for r in from_folder] == [str(p) for p in sorted(paths, key=lambda p: p.relative_to(folder))]
    from_list = inference_model(model, [paths[2], paths[0]])
    assert [r["path"] for r in from_list] == [str(paths[2]), str(paths[0])]
    assert from_list[1]["top_k_labels"] == next(r for r in from_folder if r["path"] == str(paths[0]))["top_k_labels"]
    batch = torch.stack([torch.from_numpy(random_pixels(32, 32, seed=s)).permute(2, 0, 1) for s in range(3)])
    as_tensor = inference_model(model, batch)
    assert isinstance(as_tensor, list) and len(as_tensor) == 3
    assert as_tensor[2]["top_k_labels"] == inference_model(model, batch[2])["top_k_labels"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        inference_model(model, tmp_path / "empty")


def test_batch_size_does_not_change_results(model):
    images = [random_pixels(30 + i, 34, seed=10 + i) for i in range(9)]
    one = inference_model(model, images, batch_size=1)
    seven = inference_model(model, images, batch_size=7)
    for a, b in zip(one, seven):
        assert a["top_k_labels"] == b["top_k_labels"]
        np.testing.assert_allclose(scores(a), scores(b), atol=1e-5)


def test_bad_files_raise_naming_the_file_or_are_skipped_in_order(model, tmp_path):
    good = [write_image(tmp_path / f"{i}.png", size=(32, 32), seed=i) for i in range(3)]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    items = [good[0], corrupt, good[1], empty, good[2]]
    with pytest.raises(BadImageError, match="corrupt.png"):
        inference_model(model, items)
    with pytest.raises(BadImageError, match="missing.png"):
        inference_model(model, tmp_path / "missing.png")
    results = inference_model(model, items, skip_bad=True, batch_size=2)
    assert [r["path"] for r in results] == [str(p) for p in items]
    assert [bool(r.get("failed")) for r in results] == [False, True, False, True, False]
    assert "corrupt.png" in results[1]["error"] and "zero bytes" in results[3]["error"]
    clean = inference_model(model, good)
    for got, want in zip([results[0], results[2], results[4]], clean):
        assert got["top_k_labels"] == want["top_k_labels"]


def test_bad_arguments_are_clear_errors(model):
    with pytest.raises(ValueError, match="0-1 scale"):
        inference_model(model, torch.full((3, 8, 8), 200.0))
    with pytest.raises(ValueError, match="uint8"):
        inference_model(model, np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        inference_model(model, np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(TypeError, match="dict"):
        inference_model(model, {"image": 1})
    with pytest.raises(ValueError, match="top_k"):
        inference_model(model, np.zeros((8, 8), np.uint8), top_k=0)
    with pytest.raises(TypeError, match="init_model"):
        inference_model(create_model("resnet20"), np.zeros((8, 8), np.uint8))


def test_top_k_is_capped_at_num_classes_and_train_mode_is_restored(model):
    model.model.train()
    try:
        result = inference_model(model, np.zeros((32, 32, 3), np.uint8), top_k=50)
        assert len(result["top_k_labels"]) == 10 and model.model.training
    finally:
        model.model.eval()
    assert result == inference_model(model, np.zeros((32, 32, 3), np.uint8), top_k=50)


def test_extract_feat_shapes_and_values(model):
    images = [random_pixels(32, 32, seed=s) for s in range(5)]
    pooled = extract_feat(model, images, batch_size=2)
    assert pooled.shape == (5, model.model.num_features) == (5, 64)
    x = torch.stack([torch.from_numpy(im).permute(2, 0, 1) for im in images]).float() / 255
    x = (x - torch.tensor(model.preprocess.mean)[:, None, None]) / torch.tensor(model.preprocess.std)[:, None, None]
    with torch.no_grad():
        expected = model.model.forward_head(model.model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-4)
    torch.nn.Linear(64, 2)(pooled).sum().backward()  # features can train a linear probe
    stages = extract_feat(model, images[0], stage="stages")
    assert [tuple(s.shape) for s in stages] == [(1, 16, 32, 32), (1, 32, 16, 16), (1, 64, 8, 8)]
    with pytest.raises(ValueError, match="stage"):
        extract_feat(model, images, stage="logits")


def test_init_model_from_pth_checkpoint_reads_classes_and_channels(tmp_path):
    torch.manual_seed(1)
    trained = create_model("resnet20", num_classes=7, in_chans=1).eval()
    path = tmp_path / "gray7.pth"
    torch.save({"state_dict": trained.state_dict()}, path)
    model = init_model("resnet20", checkpoint=path, precision="eager")  # the fp32 model as it is: compared at 1e-5
    assert model.model.num_classes == 7 and model.preprocess.in_chans == 1 and len(model.class_names) == 7
    image = random_pixels(32, 32, channels=1, seed=3)
    x = (torch.from_numpy(image)[None, None].float() / 255 - np.mean(model.preprocess.mean)) / np.mean(
        model.preprocess.std)
    with torch.no_grad():
        expected = torch.softmax(trained(x.float()), dim=1)[0]
    result = inference_model(model, image, top_k=7)
    np.testing.assert_allclose(scores(result), expected[result["top_k_labels"]].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="architecture"):
        init_model(path)


def test_init_model_rejects_unknown_names():
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        init_model("no_such_model_or_recipe")
    with pytest.raises(KeyError, match="resnet50.tv_in1k"):
        init_model("resnet50.no_such_tag")


def test_imagenet_class_names_file():
    names, synsets = imagenet_class_names(), imagenet_synsets()
    assert len(names) == len(set(names)) == 1000 and len(set(synsets)) == 1000
    assert names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet tissue"
    assert synsets[0] == "n01440764" and synsets[999] == "n15075141" and synsets == sorted(synsets)
    assert names[134] == "crane bird" and names[517] == "crane"  # the duplicated lemma, told apart
    assert init_model("resnet18").class_names == names  # any 1000-class model gets the ImageNet names


# ------------------------------------------------------------------------------------ the fast path
def probabilities(result) -> dict[int, float]:
    return dict(zip(result["top_k_labels"], result["top_k_scores"]))


def assert_close_probabilities(result, reference, atol):
    got, want = probabilities(result), probabilities(reference)
    assert got.keys() == want.keys()
    for label in want:
        assert abs(got[label] - want[label]) <= atol, (label, got[label], want[label])


def test_default_fast_path_is_prepared_on_use_and_follows_the_weights():
    torch.manual_seed(0)
    model = init_model("resnet20")
    assert model.precision == "auto" and model.runner_info is None  # nothing prepared yet
    exact = init_model("resnet20", precision="eager")
    assert exact.precision == "eager"
    exact.model.load_state_dict(model.model.state_dict())
    image = random_pixels(32, 32, seed=4)

    result = inference_model(model, image, top_k=10)
    info = model.runner_info
    assert info.dtype == auto_dtype(torch.device("cpu")) and info.channels_last
    assert info.bn_folded == 19 and not info.bn_kept  # ResNet-20: stem + 9 blocks x 2, option-A shortcuts
    assert_close_probabilities(result, inference_model(exact, image, top_k=10), atol=0.02)
    inference_model(model, [image, image])
    assert model.runner_info is info  # same weights: not prepared again

    with torch.no_grad():  # an in-place change of the weights, announced by refresh()
        model.model.fc.bias[3] += 100
    model.refresh()
    assert inference_model(model, image)["pred_label"] == 3
    assert model.runner_info is not info

    torch.manual_seed(5)  # new weights through load_state_dict: noticed without refresh()
    other = create_model("resnet20").eval()
    model.model.load_state_dict(other.state_dict())
    exact.model.load_state_dict(other.state_dict())
    assert_close_probabilities(inference_model(model, image, top_k=10), inference_model(exact, image, top_k=10),
                               atol=0.02)

    twin = copy.deepcopy(model)  # a copy keeps the setting, not the prepared runner
    assert twin.precision == "auto" and twin.runner_info is None
    assert inference_model(twin, image)["pred_label"] == inference_model(model, image)["pred_label"]


def test_fast_path_options_and_their_errors(tmp_path):
    model = init_model("resnet20", precision="fp32")
    image = random_pixels(32, 32, seed=6)
    exact = init_model("resnet20", precision="eager")
    exact.model.load_state_dict(model.model.state_dict())
    assert_close_probabilities(inference_model(model, image, top_k=10), inference_model(exact, image, top_k=10),
                               atol=1e-5)  # fp32: BN folding and channels_last only
    assert model.runner_info.dtype == "fp32" and model.runner_info.backend == "onnxruntime"
    on_torch = init_model("resnet20", precision="fp32", backend="torch")
    on_torch.model.load_state_dict(model.model.state_dict())
    assert_close_probabilities(inference_model(on_torch, image, top_k=10), inference_model(exact, image, top_k=10),
                               atol=1e-5)
    assert on_torch.runner_info.backend == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        init_model("resnet20", backend="mlas")
    with pytest.raises(ValueError, match="precision must be one of"):
        init_model("resnet20", precision="fp16")
    with pytest.raises(ValueError, match="needs calibration images"):
        init_model("resnet20", precision="int8")
    with pytest.raises(ValueError, match="precision='int8' only"):
        init_model("resnet20", calibration=[image])
    with pytest.raises(ValueError, match="compile=True needs a fast path"):
        init_model("resnet20", precision="eager", compile=True)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # raised inside torch.compile
def test_compiled_fast_path_pads_the_last_batch_instead_of_compiling_again():
    model = init_model("resnet20", compile=True)
    exact = init_model("resnet20", precision="eager")
    exact.model.load_state_dict(model.model.state_dict())
    images = [random_pixels(32, 32, seed=20 + i) for i in range(5)]
    results = inference_model(model, images, batch_size=4, top_k=10)  # batches of 4 and 1
    # compiled once, for batch 4
    assert model.runner_info.compiled and list(model._runner.compile_seconds) == [(4, 3, 32, 32)]
    for result, reference in zip(results, inference_model(exact, images, batch_size=1, top_k=10)):
        assert_close_probabilities(result, reference, atol=0.02)


def test_int8_calibrates_on_images_and_samples_large_sets(tmp_path):
    folder = tmp_path / "calibration"
    paths = [write_image(folder / f"{i:02d}.png", size=(36, 36), seed=i) for i in range(8)]
    model = init_model("resnet20", precision="int8", calibration=folder)
    assert model.calibration == paths
    results = inference_model(model, paths)
    assert len(results) == 8 and all(0 <= r["pred_label"] < 10 for r in results)
    assert model.runner_info.dtype == "int8" and "int8" in model.runner_info.steps[-1]
    many = init_model("resnet20", precision="int8", calibration=list(range(1000)))  # sampled, not all kept
    assert many.calibration == [int(i * 1000 / 256) for i in range(256)]


# ------------------------------------------------------------------------------------ Fashion-MNIST check
@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory):
    """A ResNet-20 trained for 4 steps on 256 real Fashion-MNIST images (recipe fashion_mnist/resnet20,
    channels_last as in the demo); the run directory and the first 64 test images written as PNG files."""
    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not installed in {FASHION_MNIST_DIR}")
    from deepres.core.config import load_config
    from deepres.train import fit

    tmp = tmp_path_factory.mktemp("fashion")
    cfg = load_config("fashion_mnist/resnet20", [
        f"data.root={FASHION_MNIST_DIR}", "data.limit_train=256", "data.batch_size=64", "data.limit_val=64",
        "data.eval_batch_size=50",
        "train.epochs=1", "train.amp=none", "train.compile=false", "train.progress=false",
        "schedule.warmup_iters=0", f"run.out_dir={tmp}", "run.name=fm"])  # compile: 4 steps would not repay it
    assert cfg.train.channels_last
    fit(cfg, device="cpu", log=lambda line: None)
    test_set = read_fashion_mnist(FASHION_MNIST_DIR, "test")
    folder = tmp / "pngs"
    folder.mkdir()
    for i in range(64):
        Image.fromarray(test_set.images[i, 0].numpy(), mode="L").save(folder / f"{i:03d}.png")
    return tmp / "fm", folder, cfg


def test_fashion_mnist_predictions_equal_the_eval_loader_path(fashion_run):
    run_dir, folder, cfg = fashion_run
    model = init_model(run_dir, precision="eager")  # the fp32 model as is: the eval loader's numbers to 1e-5
    assert model.class_names == FASHION_MNIST_CLASSES
    assert model.preprocess == Preprocess(resize=28, crop_size=28, mean=(0.2860,), std=(0.3530,), in_chans=1)
    assert model.config.train.channels_last and model.model.conv1.weight.is_contiguous()  # did not leak
    _, eval_loader, _ = build_loaders(cfg.data, "cpu")
    with torch.no_grad():
        loader_probs = torch.cat([torch.softmax(model.model(x), dim=1) for x, _ in eval_loader])
    results = inference_model(model, folder, top_k=3, batch_size=32)
    assert [Path(r["path"]).name for r in results] == [f"{i:03d}.png" for i in range(64)]
    assert [r["pred_label"] for r in results] == loader_probs.argmax(1).tolist()
    got = torch.tensor([r["pred_score"] for r in results])
    torch.testing.assert_close(got, loader_probs.max(1).values, atol=1e-5, rtol=0)
    assert len(set(r["pred_label"] for r in results)) > 1  # the model learned something beyond one class

    # The default fast path (bf16 on this CPU): the same predictions up to bf16 rounding. A label may differ
    # only where fp32's top two probabilities are within the rounding.
    fast = inference_model(init_model(run_dir), folder, top_k=3, batch_size=32)
    top2 = loader_probs.topk(2, dim=1).values
    for i, (result, exact) in enumerate(zip(fast, results)):
        assert abs(result["pred_score"] - exact["pred_score"]) < 0.03, i
        close_call = top2[i, 0] - top2[i, 1] < 0.03
        assert result["pred_label"] == exact["pred_label"] or close_call, i


def test_fashion_mnist_checkpoint_file_and_recipe_give_the_same_model(fashion_run):
    run_dir, folder, _ = fashion_run
    weights = run_dir / "checkpoints" / "last.safetensors"
    images = sorted(folder.iterdir())[:16]
    reference = inference_model(init_model(run_dir), images)
    for model in (init_model(weights), init_model("fashion_mnist/resnet20", checkpoint=weights),
                  init_model("resnet20", checkpoint=weights)):
        assert model.class_names == FASHION_MNIST_CLASSES and model.preprocess.in_chans == 1
        results = inference_model(model, images)
        assert [r["pred_label"] for r in results] == [r["pred_label"] for r in reference]
    with pytest.raises(ValueError, match="resnet20, not resnet32"):
        init_model("resnet32", checkpoint=weights)
    with pytest.raises(ValueError, match="run directory"):
        init_model(run_dir, checkpoint=weights)
