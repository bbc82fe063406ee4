"""Read MXNet `.params` files (a saved NDArray list) into numpy arrays, without mxnet.

The layout was checked against apache/mxnet at b84609d3 (master, 2.0.0.beta1-92, 2023-01-26):
src/ndarray/ndarray.cc `NDArray::Save`/`Load`/`LegacyLoad`/`LegacyTShapeLoad` and the list `Save`/`Load`
(kMXAPINDArrayListMagic), include/mxnet/tuple.h `Tuple::Save`/`Load` and `TShape()`, include/mxnet/base.h
`Context::Save`, 3rdparty/mshadow/mshadow/base.h `TypeFlag`; against tag v0.9.3 (the 2016 era of the ademxapp
"Wider or Deeper" releases) for the magic-less legacy array; and against dmlc-core include/dmlc/serializer.h for
vectors and strings. Everything is little-endian:

    file   = uint64 0x112, uint64 reserved, uint64 n, n * array, uint64 m, m * (uint64 len, len bytes of name)
    array  = uint32 magic, then by magic:
      V2 0xF993FAC9 / V3 0xF993FACA: int32 storage type (0 dense; 1 row_sparse, 2 csr), shape, [body]
      V1 0xF993FAC8:                 shape, [body]
      anything else (legacy):        the value is ndim; ndim * uint32 dims, [body]
    shape  = int32 ndim, ndim * int64 dims
    body   = int32 dev_type, int32 dev_id, int32 type flag, prod(shape) * itemsize bytes (C order)

A "none" array (no data) stops after its shape: ndim 0 in V1/V2/legacy, ndim -1 (TShape's default since MXNet
1.5) in any version, or any dim -1 in V3. It is returned as an empty float32 array of shape (0,). In V3 (numpy
shape semantics) ndim 0 is a scalar with one element. m is 0 when the arrays were saved without names; then the
keys are "0", "1", ... in file order. Sparse arrays are rejected: their layout is never used for parameters.
"""
import struct
from pathlib import Path

import numpy as np

LIST_MAGIC = 0x112  # kMXAPINDArrayListMagic
V1_MAGIC, V2_MAGIC, V3_MAGIC = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
# mshadow TypeFlag -> numpy dtype (little-endian); 12 is bfloat16, which numpy lacks.
DTYPES = {0: "<f4", 1: "<f8", 2: "<f2", 3: "u1", 4: "<i4", 5: "i1", 6: "<i8", 7: "?", 8: "<i2", 9: "<u2",
          10: "<u4", 11: "<u8"}
_STORAGE_NAMES = {-1: "undefined", 1: "row_sparse", 2: "csr"}
# A legacy array's first word is its ndim; larger values are taken as a wrong magic, not as a shape.
_MAX_LEGACY_NDIM = 32


class _Cursor:
    """Reads little-endian fields from the file's bytes; every read past the end is a ValueError."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.offset = data, path, 0

    def error(self, message: str) -> ValueError:
        return ValueError(f"{self.path}: {message}")

    def take(self, size: int, what: str) -> memoryview:
        if size > len(self.data) - self.offset:
            raise self.error(f"truncated: {what} needs {size} bytes at offset {self.offset}, "
                             f"the file has {len(self.data)}")
        view = memoryview(self.data)[self.offset:self.offset + size]
        self.offset += size
        return view

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def remaining(self) -> int:
        return len(self.data) - self.offset


def _read_shape(cursor: _Cursor, magic: int, what: str) -> tuple[int, ...] | None:
    """The array's shape, or None for a "none" array (see the module docstring)."""
    if magic not in (V1_MAGIC, V2_MAGIC, V3_MAGIC):  # legacy: the magic word was the ndim
        return cursor.unpack(f"{magic}I", f"{what} shape") if magic else None
    (ndim,) = cursor.unpack("i", f"{what} ndim")
    if ndim == -1 or (ndim == 0 and magic != V3_MAGIC):
        return None
    if ndim < 0:
        raise cursor.error(f"{what} has ndim {ndim}")
    shape = cursor.unpack(f"{ndim}q", f"{what} shape")
    if magic == V3_MAGIC and -1 in shape:
        return None
    if any(dim < 0 for dim in shape):
        raise cursor.error(f"{what} has a negative dimension in shape {shape}")
    return shape


def _read_array(cursor: _Cursor, index: int) -> np.ndarray:
    what = f"array {index}"
    (magic,) = cursor.unpack("I", f"{what} magic")
    if magic not in (V1_MAGIC, V2_MAGIC, V3_MAGIC) and magic > _MAX_LEGACY_NDIM:
        raise cursor.error(f"{what} has unknown magic 0x{magic:08x} (not V1/V2/V3, too large for a legacy ndim)")
    if magic in (V2_MAGIC, V3_MAGIC):
        (storage,) = cursor.unpack("i", f"{what} storage type")
        if storage != 0:
            name = _STORAGE_NAMES.get(storage, "unknown")
            raise cursor.error(f"{what} has {name} storage (type {storage}); only dense arrays are supported")
    shape = _read_shape(cursor, magic, what)
    if shape is None:
        return np.empty((0,), dtype=np.float32)
    cursor.unpack("ii", f"{what} context")  # dev_type, dev_id: where it was saved from; loaded onto the CPU
    (type_flag,) = cursor.unpack("i", f"{what} dtype")
    if type_flag not in DTYPES:
        detail = " (bfloat16, which numpy lacks)" if type_flag == 12 else ""
        raise cursor.error(f"{what} has unsupported dtype code {type_flag}{detail}")
    dtype = np.dtype(DTYPES[type_flag])
    count = int(np.prod(shape, dtype=object))  # exact, no int64 overflow on a corrupt shape
    data = cursor.take(count * dtype.itemsize, f"{what} data of shape {tuple(shape)} {dtype.name}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()  # copy: writable, not tied to the file bytes


def read_mxnet_params(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an MXNet NDArray list file (`.params`), keyed by their stored names ("arg:...", "aux:...")."""
    path = Path(path)
    cursor = _Cursor(path.read_bytes(), path)
    magic, _reserved = cursor.unpack("QQ", "header")
    if magic != LIST_MAGIC:
        raise cursor.error(f"not an MXNet NDArray list: magic 0x{magic:x}, expected 0x{LIST_MAGIC:x}")
    (num_arrays,) = cursor.unpack("Q", "array count")
    if num_arrays > cursor.remaining() // 4:  # each array takes at least its 4-byte magic
        raise cursor.error(f"array count {num_arrays} does not fit in the {cursor.remaining()} bytes left")
    arrays = [_read_array(cursor, index) for index in range(num_arrays)]
    (num_names,) = cursor.unpack("Q", "name count")
    if num_names not in (0, num_arrays):
        raise cursor.error(f"{num_names} names for {num_arrays} arrays")
    names = []
    for index in range(num_names):
        (length,) = cursor.unpack("Q", f"name {index} length")
        raw = cursor.take(length, f"name {index}")
        try:
            names.append(bytes(raw).decode("utf-8"))
        except UnicodeDecodeError:
            raise cursor.error(f"name {index} is not UTF-8") from None
    if cursor.remaining():
        raise cursor.error(f"{cursor.remaining()} unexpected bytes after the names at offset {cursor.offset}")
    names = names or [str(index) for index in range(num_arrays)]
    first_index: dict[str, int] = {}
    for index, name in enumerate(names):  # one pass: a file may hold 100,000 names
        if first_index.setdefault(name, index) != index:
            raise cursor.error(f"the name {name!r} is stored twice (arrays {first_index[name]} and {index})")
    return dict(zip(names, arrays))
