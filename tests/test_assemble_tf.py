"""clovaai/assembled-cnn TensorFlow checkpoints -> deepres: the V2 checkpoint reader (models/tf_checkpoint.py) on a
checkpoint real TensorFlow wrote, the name mapping (models/assemble_tf.py) against the variables their own graph
creates (tests/data/assemble_tf, written by make_fixture.py there), and `deepres convert assemble` on a full-shape
Assemble-ResNet50 checkpoint written here in TF's format without TensorFlow; the converted model's forward pass
against the logits THEIR TensorFlow graph computed (*_forward.npz, written by make_forward_fixture.py there), and
`deepres eval` of a converted checkpoint."""
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from data_helpers import write_image
from PIL import Image

from deepres.cli import main as cli_main
from deepres.data.imagenet_classes import imagenet_synsets
from deepres.models import create_model
from deepres.models.assemble_tf import convert_assemble, tf_names
from deepres.models.tf_checkpoint import TABLE_MAGIC, crc32c, list_tf_checkpoint, mask_crc, read_tf_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent / "data" / "assemble_tf"))
from weight_rule import forward_weights  # noqa: E402  (the fixture script's rule, numpy only)

DATA = Path(__file__).parent / "data" / "assemble_tf"
SMALL = DATA / "small"
DTYPE_ENUM = {np.dtype("float32"): 1, np.dtype("int32"): 3, np.dtype("int64"): 9, np.dtype("float16"): 19}


# ---- a writer of TF's V2 format (the layout tf_checkpoint.py documents), for inputs TensorFlow would not write ---

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value) -> bytes:
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    return _varint(number << 3) + _varint(value)


def _block(entries: list[tuple[bytes, bytes]], kind: bytes = b"\0") -> bytes:
    """Entries without shared key prefixes, one restart point; trailer: compression type (0 none, 1 snappy), crc."""
    body = b"".join(_varint(0) + _varint(len(key)) + _varint(len(value)) + key + value for key, value in entries)
    body += struct.pack("<II", 0, 1)
    return body + kind + struct.pack("<I", mask_crc(crc32c(body + kind)))


def write_checkpoint(prefix: Path, arrays: dict, with_crc: bool = True, dtypes: dict | None = None,
                     sliced: tuple = (), kind: bytes = b"\0") -> None:
    """PREFIX.index + PREFIX.data-00000-of-00001 holding `arrays` (dtypes: {name: DataType enum} overrides)."""
    data, entries = bytearray(), []
    for name in sorted(arrays):
        raw = np.ascontiguousarray(arrays[name]).tobytes()
        dims = b"".join(_field(2, _field(1, d)) for d in arrays[name].shape)
        entry = _field(1, (dtypes or {}).get(name, DTYPE_ENUM.get(arrays[name].dtype, 0))) + _field(2, dims)
        entry += _field(4, len(data)) + _field(5, len(raw))
        if with_crc:
            entry += _varint(6 << 3 | 5) + struct.pack("<I", mask_crc(crc32c(raw)))
        if name in sliced:
            entry += _field(7, b"")
        entries.append((name.encode(), entry))
        data += raw
    header = _field(1, 1) + _field(3, _field(1, 1))
    data_block = _block([(b"", header)] + entries, kind)
    index_block = _block([(entries[-1][0], _varint(0) + _varint(len(data_block) - 5))])
    meta_block = _block([])
    meta_at, index_at = len(data_block), len(data_block) + len(meta_block)
    footer = (_varint(meta_at) + _varint(len(meta_block) - 5) + _varint(index_at) + _varint(len(index_block) - 5))
    footer = footer.ljust(40, b"\0") + struct.pack("<Q", TABLE_MAGIC)
    Path(f"{prefix}.index").write_bytes(data_block + meta_block + index_block + footer)
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))


def their_variables(name: str) -> dict[str, tuple[int, ...]]:
    """{TF name: shape} of their graph (make_fixture.py's list) with the Momentum slots the list leaves out."""
    shapes = {}
    for line in (DATA / f"{name}_variables.txt").read_text().splitlines():
        if line.startswith("#"):
            continue
        variable, shape = line.split()
        shapes[variable] = tuple(int(d) for d in shape.strip("[]").split(",") if d)
    slots = {f"{v}/Momentum": s for v, s in shapes.items()
             if v != "global_step" and not v.endswith(("moving_mean", "moving_variance"))}
    return {**shapes, **slots}


def random_arrays(shapes: dict) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: (np.array(7, dtype=np.int64) if name == "global_step" else rng.random(shape, dtype=np.float32))
            for name, shape in shapes.items()}


def load_strict(model_name: str, state: dict, **kwargs) -> torch.nn.Module:
    """create_model(model_name) with `state` loaded strict (built on the meta device and given the tensors: no
    random init of 42M parameters first). For keys and values only: BlurPool2d's filter, a non-persistent buffer,
    stays on the meta device, so such a model must not run a forward pass (`built_model` does)."""
    with torch.device("meta"):
        model = create_model(model_name, **kwargs)
    model.load_state_dict(state, strict=True, assign=True)
    return model


@pytest.fixture(scope="module")
def r50_arrays():
    shapes = their_variables("assemble_resnet50")
    return random_arrays({name: shape for name, shape in shapes.items() if not name.endswith("/Momentum")}
                         | {"resnet_model/dense/kernel/Momentum": shapes["resnet_model/dense/kernel/Momentum"]})


def one_line(excinfo, *parts) -> str:
    message = str(excinfo.value.args[0])
    assert "\n" not in message
    for part in parts:
        assert str(part) in message, (part, message)
    return message


# ---- the reader ------------------------------------------------------------------------------------------------

def test_reader_returns_every_tensor_tensorflow_wrote():
    expected = np.load(DATA / "small_expected.npz")
    for source in (SMALL, Path(f"{SMALL}.index")):  # the prefix or the .index path, as TF users pass both
        arrays = read_tf_checkpoint(source)
        assert sorted(arrays) == sorted(expected.files)
        for name in expected.files:
            assert arrays[name].dtype == expected[name].dtype, name
            assert arrays[name].shape == expected[name].shape, name
            np.testing.assert_array_equal(arrays[name], expected[name], err_msg=name)
    assert arrays["global_step"] == 123456789012  # int64 beyond 32 bits
    listing = {name: (shape, dtype) for name, shape, dtype in list_tf_checkpoint(SMALL)}
    assert listing["dtypes/bfloat16"] == ((5,), "bfloat16")
    assert listing["dtypes/float16"] == ((2, 3), "float16")
    assert listing["resnet_model/stage0/conv2d/kernel"] == ((3, 3, 3, 3), "float32")


def test_reader_reads_only_the_named_tensors():
    arrays = read_tf_checkpoint(SMALL, names=["dtypes/int32"])
    assert list(arrays) == ["dtypes/int32"]
    with pytest.raises(KeyError) as excinfo:
        read_tf_checkpoint(SMALL, names=["nope"])
    one_line(excinfo, "small.index", "nope")


def test_crc32c_matches_the_standard_check_value_and_a_bytewise_crc():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    data = np.random.default_rng(1).integers(0, 256, 3001, dtype=np.uint8).tobytes()  # 4 lanes + a 1-byte tail
    register = 0xFFFFFFFF
    for byte in data:
        register ^= byte
        for _ in range(8):
            register = (register >> 1) ^ 0x82F63B78 if register & 1 else register >> 1
    assert crc32c(data) == register ^ 0xFFFFFFFF


@pytest.fixture
def small_copy(tmp_path):
    for path in DATA.glob("small.*"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path / "small"


def test_missing_data_shard_is_named(small_copy):
    Path(f"{small_copy}.data-00000-of-00001").unlink()
    with pytest.raises(FileNotFoundError) as excinfo:
        read_tf_checkpoint(small_copy)
    one_line(excinfo, "small.data-00000-of-00001")


def test_missing_index_is_named(tmp_path):
    with pytest.raises(FileNotFoundError) as excinfo:
        read_tf_checkpoint(tmp_path / "model.ckpt-100")
    one_line(excinfo, "model.ckpt-100.index")


@pytest.mark.parametrize("keep", [0, 20, 1000])
def test_truncated_index_is_named(small_copy, keep):
    index = Path(f"{small_copy}.index")
    index.write_bytes(index.read_bytes()[:keep])
    with pytest.raises(ValueError) as excinfo:
        read_tf_checkpoint(small_copy)
    one_line(excinfo, "small.index")


def test_bad_magic_is_named(small_copy):
    index = Path(f"{small_copy}.index")
    data = bytearray(index.read_bytes())
    data[-1] ^= 0xFF
    index.write_bytes(bytes(data))
    with pytest.raises(ValueError) as excinfo:
        read_tf_checkpoint(small_copy)
    one_line(excinfo, "small.index", "bad magic")


def test_truncated_or_corrupted_data_is_named(small_copy):
    shard = Path(f"{small_copy}.data-00000-of-00001")
    data = shard.read_bytes()
    shard.write_bytes(data[:-1])
    with pytest.raises(ValueError) as excinfo:
        read_tf_checkpoint(small_copy)
    one_line(excinfo, "small.data-00000-of-00001", "truncated", "tensor")
    shard.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    with pytest.raises(ValueError) as excinfo:
        read_tf_checkpoint(small_copy)
    one_line(excinfo, "small.data-00000-of-00001", "crc32c")
    assert len(read_tf_checkpoint(small_copy, verify=False)) == 104  # the check can be turned off


def test_corrupted_index_block_fails_its_crc(small_copy):
    index = Path(f"{small_copy}.index")
    data = bytearray(index.read_bytes())
    data[10] ^= 0x20
    index.write_bytes(bytes(data))
    with pytest.raises(ValueError) as excinfo:
        read_tf_checkpoint(small_copy)
    one_line(excinfo, "small.index", "crc32c")


def test_unknown_dtype_sliced_tensor_and_wrong_size_are_refused_by_name(tmp_path):
    arrays = {"a": np.zeros((2, 2), np.float32), "b": np.zeros(3, np.float32)}
    write_checkpoint(tmp_path / "ckpt", arrays, dtypes={"b": 7})
    with pytest.raises(ValueError) as excinfo:
        read_tf_checkpoint(tmp_path / "ckpt")
    one_line(excinfo, "ckpt.data-00000-of-00001", "'b'", "string")
    assert read_tf_checkpoint(tmp_path / "ckpt", names=["a"])["a"].shape == (2, 2)
    write_checkpoint(tmp_path / "ckpt", arrays, sliced=("a",))
    with pytest.raises(ValueError) as excinfo:
        read_tf_checkpoint(tmp_path / "ckpt")
    one_line(excinfo, "ckpt.index", "'a'", "slices")
    write_checkpoint(tmp_path / "ckpt", arrays, dtypes={"b": 9})  # int64: 24 bytes wanted, 12 stored
    with pytest.raises(ValueError) as excinfo:
        read_tf_checkpoint(tmp_path / "ckpt")
    one_line(excinfo, "ckpt.data-00000-of-00001", "'b'", "12 bytes", "24")


def test_snappy_block_is_refused(tmp_path):
    write_checkpoint(tmp_path / "ckpt", {"a": np.zeros(2, np.float32)}, kind=b"\1")
    with pytest.raises(ValueError) as excinfo:
        read_tf_checkpoint(tmp_path / "ckpt")
    one_line(excinfo, "ckpt.index", "snappy")


# ---- the mapping ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_name", ["assemble_resnet50", "assemble_resnet152"])
def test_every_variable_of_their_graph_has_its_key_in_creation_order(model_name):
    shapes = their_variables(model_name)
    with torch.device("meta"):
        model = create_model(model_name, num_classes=1001)
    own = model.state_dict()
    names = tf_names(model)
    model_variables = [v for v in shapes if v != "global_step" and not v.endswith("/Momentum")]
    assert [name for _, name, _ in names] == model_variables  # all of them, in the order their code creates them
    assert {key for key, _, _ in names} == {key for key in own if not key.endswith("num_batches_tracked")}
    for key, name, how in names:
        shape = shapes[name]
        shape = {"conv": lambda s: (s[3], s[2], s[0], s[1]), "dense": lambda s: s[::-1]}.get(how, tuple)(shape)
        assert shape == tuple(own[key].shape), (key, name)


def test_converted_assemble_resnet50_loads_strict_and_keeps_the_values(r50_arrays):
    model = load_strict("assemble_resnet50", convert_assemble(r50_arrays, "assemble_resnet50"))
    assert model.fc.out_features == 1000
    kernel = r50_arrays["resnet_model/stage0/conv2d/kernel"]  # HWIO -> OIHW
    assert torch.equal(model.conv1.weight, torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
    sk = r50_arrays["resnet_model/stage1/big1/sk_block/sk_fc_2/kernel"]
    assert torch.equal(model.layer1.big[0].conv2.fc_select.weight, torch.from_numpy(sk.transpose(3, 2, 0, 1).copy()))
    bn = r50_arrays["resnet_model/stage4/batch_normalization_9/moving_variance"]
    assert torch.equal(model.layer4[2].bn3.running_var, torch.from_numpy(bn))
    dense, bias = r50_arrays["resnet_model/dense/kernel"], r50_arrays["resnet_model/dense/bias"]
    assert torch.equal(model.fc.weight, torch.from_numpy(dense.T[1:].copy()))  # background row 0 dropped
    assert torch.equal(model.fc.bias, torch.from_numpy(bias[1:]))
    full = convert_assemble(r50_arrays, "assemble_resnet50", keep_background=True)
    model = load_strict("assemble_resnet50", full, num_classes=1001)
    assert torch.equal(model.fc.weight, torch.from_numpy(dense.T.copy()))


def test_conversion_errors_name_the_variable(r50_arrays):
    missing = dict(r50_arrays)
    del missing["resnet_model/stage2/merge2/sk_block/sk_fc_1/kernel"]
    with pytest.raises(ValueError) as excinfo:
        convert_assemble(missing, "assemble_resnet50", source="ck.index")
    one_line(excinfo, "ck.index", "resnet_model/stage2/merge2/sk_block/sk_fc_1/kernel", "layer2.merge.0.conv2")
    extra = {**r50_arrays, "resnet_model/embedding_dense/kernel": np.zeros((1, 1, 2048, 8), np.float32)}
    with pytest.raises(ValueError) as excinfo:
        convert_assemble(extra, "assemble_resnet50", source="ck.index")
    one_line(excinfo, "ck.index", "resnet_model/embedding_dense/kernel")
    wrong = {**r50_arrays, "resnet_model/stage0/conv2d/kernel": np.zeros((3, 3, 3, 64), np.float32)}
    with pytest.raises(ValueError) as excinfo:
        convert_assemble(wrong, "assemble_resnet50", source="ck.index")
    one_line(excinfo, "ck.index", "resnet_model/stage0/conv2d/kernel", "conv1.weight")
    with pytest.raises(ValueError) as excinfo:  # a ResNet-50 checkpoint is not a ResNet-152 one
        convert_assemble(r50_arrays, "assemble_resnet152", source="ck.index")
    one_line(excinfo, "ck.index", "missing")
    with pytest.raises(ValueError) as excinfo:
        convert_assemble(r50_arrays, "resnet50")
    one_line(excinfo, "resnet50")


# ---- the command -------------------------------------------------------------------------------------------

def test_convert_assemble_end_to_end(tmp_path, r50_arrays, capsys):
    prefix = tmp_path / "model.ckpt-600"
    write_checkpoint(prefix, r50_arrays, with_crc=False)  # a crc over 167 MB is the reader's slow part
    out = tmp_path / "assemble_resnet50.safetensors"
    result = subprocess.run([sys.executable, "-m", "deepres", "convert", "assemble", f"{prefix}.index", "--model",
                             "assemble_resnet50", "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "1000 classes" in result.stdout and "skipped 2" in result.stdout
    model = load_strict("assemble_resnet50", safetensors.torch.load_file(out))
    kernel = r50_arrays["resnet_model/stage3/little3/conv2d_4/kernel"]  # the little branch's expansion conv
    assert torch.equal(model.layer3.little_expand[0].weight, torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
    assert torch.equal(model.fc.bias, torch.from_numpy(r50_arrays["resnet_model/dense/bias"][1:]))
    # refusals: an existing --out without --force, a missing prefix, no --model, a checkpoint of another model
    assert cli_main(["convert", "assemble", str(prefix), "--model", "assemble_resnet50", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    other = tmp_path / "other.safetensors"
    assert cli_main(["convert", "assemble", str(tmp_path / "none"), "--model", "assemble_resnet50", "--out",
                     str(other)]) == 2
    assert "none.index: no such file" in capsys.readouterr().err
    assert cli_main(["convert", "assemble", str(prefix), "--out", str(other)]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert cli_main(["convert", "assemble", str(SMALL), "--model", "assemble_resnet50", "--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert "small.index" in err and "missing" in err and err.count("\n") == 1
    assert not other.exists()


# ---- the forward pass against their TensorFlow graph -----------------------------------------------------------

PROBES = ("stem", "pool", "stage1", "stage2", "stage3", "stage4")


def forward_case(model_name: str):
    """(the results their graph computed, the regenerated variables by TF name, the input NCHW float32)."""
    stored = dict(np.load(DATA / f"{model_name}_forward.npz"))
    shapes = [(name, shape) for name, shape in their_variables(model_name).items()
              if name != "global_step" and not name.endswith("/Momentum")]
    rng = np.random.default_rng(int(stored["seed"]))
    values = forward_weights(shapes, rng)
    pixels = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    # the same weights and pixels as make_forward_fixture.py drew, or the comparison below means nothing
    np.testing.assert_allclose([v.astype(np.float64).sum() for v in values], stored["weight_sums"], rtol=1e-12)
    np.testing.assert_array_equal(pixels, stored["pixels"])
    image = torch.from_numpy((pixels.astype(np.float32) - 128) / 64).permute(0, 3, 1, 2)  # NHWC -> NCHW
    return stored, {name: value for (name, _), value in zip(shapes, values)}, image


def built_model(model_name: str, state: dict, **kwargs) -> torch.nn.Module:
    """create_model on the CPU (buffers such as the blur filters made), `state` loaded strict, in eval mode."""
    model = create_model(model_name, **kwargs)
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.mark.parametrize("model_name", ["assemble_resnet50", "assemble_resnet152"])
def test_converted_checkpoint_computes_their_tensorflow_logits(model_name):
    stored, arrays, image = forward_case(model_name)
    model = built_model(model_name, convert_assemble(arrays, model_name, keep_background=True), num_classes=1001)
    outputs = {}  # the probes make_forward_fixture.py stored (per-channel spatial means, (2, C)), caught by hooks
    model.maxpool.register_forward_hook(lambda _, args, out: outputs.update(stem=args[0], pool=out))
    for probe, stage in zip(PROBES[2:], model.stage_names):
        getattr(model, stage).register_forward_hook(lambda _, args, out, probe=probe: outputs.update({probe: out}))
    with torch.no_grad():
        logits = model(image)
    # Tolerance 2e-5 of the largest value: float32 rounding, TF (oneDNN) against PyTorch, measured 6e-7 of it
    # (ResNet-50: 1.2e-6 of 1.95) and 9e-7 (ResNet-152: 1.6e-5 of 17.9). A 2x2 instead of 3x3 shortcut pool, a blur
    # without reflect padding, bilinear Big-Little upsampling or BN eps 1e-3 each move ResNet-50's logits by 0.01
    # to 1.4, 260 to 36,000 times the tolerance.
    for probe in PROBES:  # in network order, so the first failure says where the computations part
        theirs = stored[f"mean_{probe}"]
        ours = outputs[probe].mean((2, 3)).numpy()
        assert np.abs(ours - theirs).max() <= 2e-5 * np.abs(theirs).max(), probe
    theirs = stored["logits"]
    tolerance = 2e-5 * np.abs(theirs).max()
    assert theirs.shape == (2, 1001)
    assert np.abs(theirs[0] - theirs[1]).max() > 100 * tolerance  # the logits depend on the image
    assert np.abs(logits.numpy() - theirs).max() <= tolerance


def test_deepres_eval_runs_a_converted_checkpoint(tmp_path, capsys):
    """A converted checkpoint (1000 classes, as `deepres convert assemble` writes it; the command itself is
    test_convert_assemble_end_to_end's) through `deepres eval` with their published eval preprocessing, on two
    uniform-colour JPEGs in the ImageNet val layout: resizing and cropping keep each one colour, so the class the
    model gives each is known beforehand; one is filed under that class, one under another: top-1 50%."""
    _, arrays, _ = forward_case("assemble_resnet50")
    state = convert_assemble(arrays, "assemble_resnet50")
    checkpoint = tmp_path / "converted.safetensors"
    safetensors.torch.save_file(state, checkpoint, metadata={"format": "pt", "model": "assemble_resnet50"})
    mean = np.array([0.48502, 0.45796, 0.40761], dtype=np.float32)  # their _R_MEAN.. / 255 (normalize=mean)
    paths, colours = [], []
    for number, colour in enumerate(((200, 30, 90), (20, 180, 240)), start=1):
        path = write_image(tmp_path / f"ILSVRC2012_val_{number:08d}.JPEG", np.full((300, 340, 3), colour, np.uint8))
        decoded = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
        assert np.ptp(decoded, axis=0).max() == 0  # JPEG kept it uniform
        paths.append(path)
        colours.append(decoded[0].astype(np.float32) - 255 * mean)  # normalize=mean: pixel - 255 * mean
    images = torch.from_numpy(np.stack(colours))[:, :, None, None].expand(2, 3, 256, 256)  # the 256 crop
    with torch.no_grad():
        top2 = built_model("assemble_resnet50", state)(images).topk(2)
    assert (top2.values[:, 0] - top2.values[:, 1] > 1e-3 * top2.values[:, 0].abs()).all()  # no near-tie
    synsets = imagenet_synsets()  # the classes of `imagenet` without a train/ folder: their sorted synsets
    for path, label in zip(paths, (top2.indices[0, 0], top2.indices[1, 1])):  # predicted, then not predicted
        target = tmp_path / "imagenet" / "val" / synsets[int(label)] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)  # both may be the same class
        shutil.copy(path, target)
    out = tmp_path / "eval"
    assert cli_main(["eval", str(checkpoint), "--model", "assemble_resnet50", "--dataset", "imagenet", "--data",
                     str(tmp_path / "imagenet"), "--eval-preset", "crop256_resize292", "--set", "data.normalize=mean",
                     "--set", "data.mean=[0.48502,0.45796,0.40761]", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "assemble_resnet50 on imagenet val (2 images" in printed and "top-1 50.00%" in printed, printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["top1"] == 50.0
