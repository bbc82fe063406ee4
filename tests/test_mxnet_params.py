"""read_mxnet_params on files written in MXNet's NDArray list format: a round trip through a small writer, a
hand-packed fixture that does not use that writer, and one clear error per kind of malformed file."""
import struct

import numpy as np
import pytest

from deepres.models.mxnet_params import LIST_MAGIC, V1_MAGIC, V2_MAGIC, V3_MAGIC, read_mxnet_params

TYPE_FLAGS = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.float16): 2, np.dtype(np.uint8): 3,
              np.dtype(np.int32): 4, np.dtype(np.int8): 5, np.dtype(np.int64): 6}


def mxnet_array_bytes(array: np.ndarray | None, version: str = "v2", context=(1, 0)) -> bytes:
    """One NDArray as MXNet's NDArray::Save writes it; None is a "none" array (shape only)."""
    if version == "legacy":  # v0.9: no magic, uint32 ndim and dims
        shape = () if array is None else array.shape
        out = struct.pack(f"<I{len(shape)}I", len(shape), *shape)
    else:
        magic = {"v1": V1_MAGIC, "v2": V2_MAGIC, "v3": V3_MAGIC}[version]
        out = struct.pack("<I", magic) + (struct.pack("<i", 0) if version != "v1" else b"")
        shape = (-1,) if array is None and version == "v3" else () if array is None else array.shape
        out += struct.pack(f"<i{len(shape)}q", len(shape), *shape)
    if array is None:
        return out
    out += struct.pack("<iii", *context, TYPE_FLAGS[array.dtype])
    return out + np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()


def mxnet_list_bytes(arrays: list, names: list[str], version: str = "v2", context=(1, 0)) -> bytes:
    """An NDArray list as MXNet's NDArray::Save(stream, data, names) writes it (the body of a `.params` file)."""
    out = struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays))
    out += b"".join(mxnet_array_bytes(array, version, context) for array in arrays)
    out += struct.pack("<Q", len(names))
    return out + b"".join(struct.pack("<Q", len(name.encode())) + name.encode() for name in names)


def example_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "arg:conv1a_weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "arg:conv1a_bias": rng.standard_normal(4).astype(np.float32),
        "arg:half_weight": rng.standard_normal((2, 5)).astype(np.float16),
        "aux:bn2_moving_mean": rng.standard_normal(4).astype(np.float64),
        "aux:steps": np.array([[1, -2, 2**40]], dtype=np.int64),
        "aux:mask": rng.integers(0, 256, size=(3, 2), dtype=np.uint8),
        "aux:empty_rows": np.zeros((0, 3), dtype=np.int32),
    }


@pytest.mark.parametrize("version", ["legacy", "v1", "v2", "v3"])
def test_round_trip_keeps_names_dtypes_shapes_and_values(tmp_path, version):
    arrays = example_arrays()
    path = tmp_path / "model.params"
    path.write_bytes(mxnet_list_bytes(list(arrays.values()), list(arrays), version))
    loaded = read_mxnet_params(path)
    assert list(loaded) == list(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape, name
        np.testing.assert_array_equal(loaded[name], array)
    loaded["arg:conv1a_bias"][0] = 1.0  # writable, independent of the file's bytes


@pytest.mark.parametrize("version", ["legacy", "v1", "v2", "v3"])
def test_none_arrays_load_empty_and_v3_scalars_keep_one_element(tmp_path, version):
    path = tmp_path / "none.params"
    path.write_bytes(mxnet_list_bytes([None, np.arange(3, dtype=np.float32)], ["arg:none", "arg:after"], version))
    loaded = read_mxnet_params(path)
    assert loaded["arg:none"].shape == (0,)
    np.testing.assert_array_equal(loaded["arg:after"], [0, 1, 2])
    if version == "v3":
        path.write_bytes(mxnet_list_bytes([np.array(2.5, dtype=np.float32)], ["arg:scalar"], version))
        assert read_mxnet_params(path)["arg:scalar"].shape == ()
        assert read_mxnet_params(path)["arg:scalar"] == 2.5


def test_unnamed_list_is_keyed_by_position(tmp_path):
    path = tmp_path / "unnamed.params"
    path.write_bytes(mxnet_list_bytes([np.ones(2, np.float32), np.zeros(1, np.int8)], []))
    assert list(read_mxnet_params(path)) == ["0", "1"]


def test_hand_packed_fixture(tmp_path):
    """Bytes spelled out field by field from ndarray.cc, independent of the writer above."""
    data = (
        b"\x12\x01\x00\x00\x00\x00\x00\x00"  # uint64 list magic 0x112
        b"\x00\x00\x00\x00\x00\x00\x00\x00"  # uint64 reserved
        b"\x01\x00\x00\x00\x00\x00\x00\x00"  # uint64 one array
        b"\xc9\xfa\x93\xf9"  # uint32 NDARRAY_V2_MAGIC 0xF993fac9
        b"\x00\x00\x00\x00"  # int32 storage type 0 (dense)
        b"\x02\x00\x00\x00"  # int32 ndim 2
        b"\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00"  # int64 dims 1, 2
        b"\x02\x00\x00\x00\x00\x00\x00\x00"  # Context: int32 dev_type 2 (gpu), int32 dev_id 0
        b"\x00\x00\x00\x00"  # int32 type flag 0 (float32)
        b"\x00\x00\x80\x3f\x00\x00\x00\xc0"  # float32 1.0, -2.0
        b"\x01\x00\x00\x00\x00\x00\x00\x00"  # uint64 one name
        b"\x07\x00\x00\x00\x00\x00\x00\x00arg:fc1"  # uint64 length 7, then the bytes
    )
    path = tmp_path / "tiny.params"
    path.write_bytes(data)
    loaded = read_mxnet_params(path)
    assert list(loaded) == ["arg:fc1"]
    assert loaded["arg:fc1"].dtype == np.float32
    np.testing.assert_array_equal(loaded["arg:fc1"], [[1.0, -2.0]])
    assert mxnet_list_bytes([np.array([[1.0, -2.0]], np.float32)], ["arg:fc1"], context=(2, 0)) == data


def _good() -> bytes:
    return mxnet_list_bytes([np.arange(6, dtype=np.float32).reshape(2, 3)], ["arg:w"])


def _array_start() -> int:
    return 24  # list magic, reserved, array count


def _with(data: bytes, offset: int, packed: bytes) -> bytes:
    return data[:offset] + packed + data[offset + len(packed):]


MALFORMED = {
    "wrong list magic": (lambda: _with(_good(), 0, struct.pack("<Q", 0x113)), "magic 0x113"),
    "empty file": (lambda: b"", "truncated"),
    "unknown array magic": (lambda: _with(_good(), _array_start(), struct.pack("<I", 0xF993FACB)), "unknown magic"),
    "sparse storage": (lambda: _with(_good(), _array_start() + 4, struct.pack("<i", 1)), "array 0 has row_sparse"),
    "unknown dtype": (lambda: _with(_good(), _array_start() + 4 + 4 + 4 + 16 + 8, struct.pack("<i", 99)),
                      "unsupported dtype code 99"),
    "bfloat16": (lambda: _with(_good(), _array_start() + 4 + 4 + 4 + 16 + 8, struct.pack("<i", 12)), "bfloat16"),
    "truncated data": (lambda: _good()[:_array_start() + 40 + 10], "truncated: array 0 data"),
    "truncated name": (lambda: _good()[:-2], "truncated: name 0"),
    "missing names": (lambda: _good()[:-(8 + 8 + 5)], "truncated: name count"),
    "name count mismatch": (lambda: mxnet_list_bytes([np.ones(1, np.float32)] * 2, ["arg:a"]), "1 names for 2 arrays"),
    "huge array count": (lambda: _with(_good(), 16, struct.pack("<Q", 2**62)), "array count"),
    "huge shape": (lambda: _with(_good(), _array_start() + 12, struct.pack("<q", 2**40)), "truncated: array 0 data"),
    "negative dim": (lambda: _with(_good(), _array_start() + 12, struct.pack("<q", -3)), "negative dimension"),
    "trailing bytes": (lambda: _good() + b"\x00", "1 unexpected bytes"),
    "duplicate name": (lambda: mxnet_list_bytes([np.ones(1, np.float32)] * 2, ["arg:a", "arg:a"]), "'arg:a'"),
    "name not utf-8": (lambda: _good()[:-5] + b"\xff" * 5, "not UTF-8"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_file_raises_one_line_error_naming_file(tmp_path, case):
    make, message = MALFORMED[case]
    path = tmp_path / "broken.params"
    path.write_bytes(make())
    with pytest.raises(ValueError, match=message) as error:
        read_mxnet_params(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_a_duplicate_name_is_reported_with_both_array_positions(tmp_path):
    path = tmp_path / "dup.params"
    names = [f"arg:w{i}" for i in range(6)] + ["arg:w2"]
    path.write_bytes(mxnet_list_bytes([np.ones(1, np.float32)] * len(names), names))
    with pytest.raises(ValueError, match=r"dup.params: the name 'arg:w2' is stored twice \(arrays 2 and 6\)"):
        read_mxnet_params(path)
