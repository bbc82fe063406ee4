"""Read TensorFlow V2 checkpoints (`PREFIX.index` + `PREFIX.data-0000N-of-0000M`, what tf.train.Saver writes) into
numpy arrays, without TensorFlow.

The layout, checked against tensorflow/tensorflow: core/util/tensor_bundle/tensor_bundle.{h,cc} (BundleWriter /
BundleReader), core/protobuf/tensor_bundle.proto, core/lib/io/format.{h,cc}, block.cc and table.cc (the LevelDB
table format), core/lib/hash/crc32c.h (Mask):

    .index  = an SSTable: data blocks, a metaindex block, an index block, a 48-byte footer
    footer  = metaindex handle, index handle (each varint64 offset, varint64 size), zero padding to 40 bytes,
              fixed64 magic 0xdb4775248b80fb57
    block   = entries, uint32 restart offsets, uint32 restart count; on disk followed by 1 byte compression type
              (0 none, 1 snappy) and the masked crc32c of block + type byte
    entry   = varint32 shared key bytes, varint32 unshared, varint32 value length, unshared key bytes, value
    index block: key -> BlockHandle of a data block; data blocks: tensor name -> BundleEntryProto; the "" key holds
    the BundleHeaderProto (1 num_shards, 2 endianness, 3 version)
    BundleEntryProto = 1 dtype, 2 shape (TensorShapeProto: 2 repeated dim {1 size}), 3 shard_id, 4 offset,
                       5 size, 6 crc32c (fixed32, masked), 7 slices (a tensor saved in slices: refused here)

A tensor is `size` raw little-endian bytes at `offset` of its shard, C order. The protobufs are decoded by hand
(varints and length-delimited fields). Every malformed input is a one-line ValueError / FileNotFoundError naming
the file and, where there is one, the tensor.
"""
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5  # compression type byte + masked crc32c
# tensorflow/core/framework/types.proto DataType -> numpy dtype of the stored bytes. bfloat16 (numpy has none) is
# read as its uint16 bit pattern and widened to float32 exactly (its 16 bits are a float32's top half).
DTYPES = {1: "<f4", 3: "<i4", 9: "<i8", 14: "<u2", 19: "<f2"}
DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
               8: "complex64", 9: "int64", 10: "bool", 11: "qint8", 12: "quint8", 13: "qint32", 14: "bfloat16",
               15: "qint16", 16: "quint16", 17: "uint16", 18: "complex128", 19: "float16", 20: "resource",
               21: "variant", 22: "uint32", 23: "uint64"}
BFLOAT16 = 14


# ---- crc32c (Castagnoli), vectorised over lanes so a 160 MB tensor checks in about a second ---------------------

def _crc_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1)
    return table.astype(np.uint32)


_CRC_TABLE = _crc_table()


def _gf2_apply(matrix: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """matrix (32 uint32 columns: the image of each bit) times each uint32 of `vectors`, over GF(2)."""
    bits = (vectors[..., None] >> np.arange(32, dtype=np.uint32)) & np.uint32(1)
    return np.bitwise_xor.reduce(np.where(bits.astype(bool), matrix, np.uint32(0)), axis=-1)


def _zeros_operator(length: int) -> np.ndarray:
    """The linear map that appending `length` zero bytes applies to a crc32c (zlib's crc32_combine)."""
    bit = np.array([0x82F63B78] + [1 << i for i in range(31)], dtype=np.uint32)  # one zero bit
    power = bit
    for _ in range(3):  # 2, 4, 8 bits: one zero byte
        power = _gf2_apply(power, power)
    result = np.array([1 << i for i in range(32)], dtype=np.uint32)  # identity
    while length:  # powers of one operator commute, so the order of composition does not matter
        if length & 1:
            result = _gf2_apply(power, result)
        power = _gf2_apply(power, power)
        length >>= 1
    return result


def _combine(first: np.ndarray, second: np.ndarray, second_length: int) -> np.ndarray:
    """crc32c(A + B) from crc32c(A), crc32c(B) and len(B) (elementwise)."""
    return _gf2_apply(_zeros_operator(second_length), first) ^ second


def crc32c(data) -> int:
    """The crc32c of `data` (bytes-like). Lanes of equal length are hashed side by side and combined."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    lanes = 1
    while lanes < 16384 and len(buffer) >= lanes * 2 * 256:
        lanes *= 2
    width = len(buffer) // lanes
    body = buffer[:lanes * width].reshape(lanes, width).T.copy() if width else np.empty((0, lanes), np.uint8)
    crc = np.full(lanes, 0xFFFFFFFF, dtype=np.uint32)
    for column in body:
        crc = _CRC_TABLE[(crc ^ column) & 0xFF] ^ (crc >> 8)
    crc ^= np.uint32(0xFFFFFFFF)
    length = width
    while len(crc) > 1:  # pairwise: every lane has the same length at each level
        crc = _combine(crc[0::2], crc[1::2], length)
        length *= 2
    value = int(crc[0])
    tail = buffer[lanes * width:]
    if len(tail):
        register = 0xFFFFFFFF
        for byte in tail.tolist():
            register = int(_CRC_TABLE[(register ^ byte) & 0xFF]) ^ (register >> 8)
        tail_crc = np.array([register ^ 0xFFFFFFFF], dtype=np.uint32)
        value = int(_combine(np.array([value], dtype=np.uint32), tail_crc, len(tail))[0]) if width else int(tail_crc[0])
    return value


def mask_crc(crc: int) -> int:
    """TensorFlow's and LevelDB's stored form of a crc32c (crc32c::Mask)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# ---- protobuf wire format ---------------------------------------------------------------------------------------

def _varint(data: bytes, offset: int, where: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(data):
            raise ValueError(f"{where}: truncated varint")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
        if shift > 63:
            raise ValueError(f"{where}: varint longer than 10 bytes")


def _fields(data: bytes, where: str) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of a protobuf message: ints for varint/fixed fields, bytes for length-delimited."""
    fields, offset = [], 0
    while offset < len(data):
        tag, offset = _varint(data, offset, where)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, offset = _varint(data, offset, where)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if offset + size > len(data):
                raise ValueError(f"{where}: truncated fixed{size * 8} field {number}")
            value = int.from_bytes(data[offset:offset + size], "little")
            offset += size
        elif wire == 2:
            size, offset = _varint(data, offset, where)
            if offset + size > len(data):
                raise ValueError(f"{where}: truncated field {number} ({size} bytes)")
            value, offset = bytes(data[offset:offset + size]), offset + size
        else:
            raise ValueError(f"{where}: unsupported protobuf wire type {wire} (field {number})")
        fields.append((number, value))
    return fields


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's BundleEntryProto."""

    name: str
    dtype: int  # DataType enum
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None  # masked, as stored; None when absent
    sliced: bool

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype, f"DataType {self.dtype}")


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _entry(name: str, value: bytes, where: str) -> TensorEntry:
    dtype, shape, shard, offset, size, crc, sliced = 0, (), 0, 0, 0, None, False
    for number, field in _fields(value, where):
        if number == 1:
            dtype = field
        elif number == 2:
            dims = []
            for dim_number, dim in _fields(field, where):
                if dim_number == 3 and dim:
                    raise ValueError(f"{where}: shape of unknown rank")
                if dim_number == 2:
                    sizes = [_int64(v) for n, v in _fields(dim, where) if n == 1]
                    dims.append(sizes[-1] if sizes else 0)
            shape = tuple(dims)
        elif number == 3:
            shard = field
        elif number == 4:
            offset = field
        elif number == 5:
            size = field
        elif number == 6:
            crc = field
        elif number == 7:
            sliced = True
    if any(dim < 0 for dim in shape):
        raise ValueError(f"{where}: negative dimension in shape {shape}")
    return TensorEntry(name, dtype, shape, shard, offset, size, crc, sliced)


# ---- the SSTable ------------------------------------------------------------------------------------------------

def _block(data: bytes, handle: tuple[int, int], path: Path, what: str, verify: bool) -> bytes:
    offset, size = handle
    if offset + size + BLOCK_TRAILER_SIZE > len(data):
        raise ValueError(f"{path}: truncated: {what} at offset {offset} needs {size + BLOCK_TRAILER_SIZE} bytes, the "
                         f"file has {len(data)}")
    block = data[offset:offset + size]
    kind = data[offset + size]
    if kind == 1:
        raise ValueError(f"{path}: {what} is snappy-compressed; TensorFlow writes checkpoint indexes uncompressed, "
                         f"so this reader does not decompress")
    if kind != 0:
        raise ValueError(f"{path}: {what} has unknown compression type {kind}")
    if verify:
        stored = int.from_bytes(data[offset + size + 1:offset + size + 5], "little")
        if mask_crc(crc32c(data[offset:offset + size + 1])) != stored:
            raise ValueError(f"{path}: {what} fails its crc32c check (corrupted file)")
    return block


def _block_entries(block: bytes, path: Path, what: str) -> list[tuple[bytes, bytes]]:
    where = f"{path}: {what}"
    if len(block) < 4:
        raise ValueError(f"{where}: shorter than its restart count")
    restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * restarts
    if restarts < 1 or end < 0:
        raise ValueError(f"{where}: bad restart count {restarts}")
    entries, offset, key = [], 0, b""
    while offset < end:
        shared, offset = _varint(block, offset, where)
        unshared, offset = _varint(block, offset, where)
        length, offset = _varint(block, offset, where)
        if shared > len(key) or offset + unshared + length > end:
            raise ValueError(f"{where}: corrupted entry at offset {offset}")
        key = key[:shared] + block[offset:offset + unshared]
        offset += unshared
        entries.append((key, block[offset:offset + length]))
        offset += length
    return entries


def _handle(data: bytes, offset: int, where: str) -> tuple[tuple[int, int], int]:
    block_offset, offset = _varint(data, offset, where)
    size, offset = _varint(data, offset, where)
    return (block_offset, size), offset


def index_path(prefix) -> Path:
    """`PREFIX.index` for a checkpoint prefix, or the `.index` path itself."""
    prefix = Path(prefix)
    return prefix if prefix.name.endswith(".index") else prefix.with_name(prefix.name + ".index")


def read_index(prefix, verify: bool = True) -> tuple[int, dict[str, TensorEntry]]:
    """(number of data shards, {tensor name: entry}) from `PREFIX.index`."""
    path = index_path(prefix)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a TensorFlow checkpoint is PREFIX.index + PREFIX.data-*)")
    data = path.read_bytes()
    if len(data) < FOOTER_SIZE:
        raise ValueError(f"{path}: truncated: {len(data)} bytes, shorter than the {FOOTER_SIZE}-byte table footer")
    footer = data[-FOOTER_SIZE:]
    if int.from_bytes(footer[-8:], "little") != TABLE_MAGIC:
        raise ValueError(f"{path}: bad magic {footer[-8:].hex()}: not a TensorFlow V2 checkpoint index (a V1 "
                         f"checkpoint or a truncated file?)")
    _, next_offset = _handle(footer, 0, f"{path}: footer")
    index_handle, _ = _handle(footer, next_offset, f"{path}: footer")
    entries: dict[str, TensorEntry] = {}
    header = None
    for _, value in _block_entries(_block(data, index_handle, path, "index block", verify), path, "index block"):
        data_handle, _ = _handle(value, 0, f"{path}: index block")
        block = _block(data, data_handle, path, f"data block at {data_handle[0]}", verify)
        for key, value in _block_entries(block, path, f"data block at {data_handle[0]}"):
            if key == b"":
                header = value
                continue
            name = key.decode("utf-8", "replace")
            entries[name] = _entry(name, value, f"{path}: tensor {name!r}")
    if header is None:
        raise ValueError(f"{path}: no bundle header (the \"\" key): not a TensorFlow V2 checkpoint index")
    fields = dict(_fields(header, f"{path}: bundle header"))
    if fields.get(2, 0) != 0:
        raise ValueError(f"{path}: big-endian checkpoint; only little-endian ones are read")
    num_shards = fields.get(1, 1)
    for entry in entries.values():
        if entry.shard_id >= num_shards:
            raise ValueError(f"{path}: tensor {entry.name!r} is in shard {entry.shard_id} of {num_shards}")
    return num_shards, entries


def list_tf_checkpoint(prefix) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype name) of every tensor of a checkpoint, sorted by name."""
    _, entries = read_index(prefix)
    return [(entry.name, entry.shape, entry.dtype_name) for entry in sorted(entries.values(), key=lambda e: e.name)]


def shard_path(prefix, shard: int, num_shards: int) -> Path:
    index = index_path(prefix)
    return index.with_name(index.name.removesuffix(".index") + f".data-{shard:05d}-of-{num_shards:05d}")


def _array(entry: TensorEntry, raw: bytes, path: Path) -> np.ndarray:
    if entry.dtype not in DTYPES:
        raise ValueError(f"{path}: tensor {entry.name!r} has dtype {entry.dtype_name}; this reader takes "
                         f"float32, float16, bfloat16, int32 and int64")
    dtype = np.dtype(DTYPES[entry.dtype])
    count = int(np.prod(entry.shape, dtype=np.int64))
    if entry.size != count * dtype.itemsize:
        raise ValueError(f"{path}: tensor {entry.name!r} is {entry.size} bytes, its shape {entry.shape} of "
                         f"{entry.dtype_name} needs {count * dtype.itemsize}")
    array = np.frombuffer(raw, dtype=dtype).reshape(entry.shape)
    if entry.dtype == BFLOAT16:  # the bits of the float32 with the same top half
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(dtype.newbyteorder("="))


def read_tf_checkpoint(prefix, names=None, verify: bool = True) -> dict[str, np.ndarray]:
    """{name: array} of a TensorFlow V2 checkpoint (`prefix` or `prefix.index`); only `names` when given (a
    KeyError names the first one missing). `verify` checks every block's and tensor's crc32c. bfloat16 tensors come
    back as float32 (exactly), the others in their own dtype."""
    index = index_path(prefix)
    num_shards, entries = read_index(prefix, verify)
    if names is not None:
        missing = [name for name in names if name not in entries]
        if missing:
            raise KeyError(f"{index}: no tensor {missing[0]!r}")
        entries = {name: entries[name] for name in names}
    shards: dict[int, object] = {}
    arrays = {}
    try:
        for entry in sorted(entries.values(), key=lambda e: (e.shard_id, e.offset)):
            path = shard_path(prefix, entry.shard_id, num_shards)
            if entry.sliced:
                raise ValueError(f"{index}: tensor {entry.name!r} was saved in slices (partitioned variable); "
                                 f"this reader takes whole tensors only")
            if entry.shard_id not in shards:
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: no such file (data shard {entry.shard_id} of {num_shards}, "
                                            f"needed for tensor {entry.name!r})")
                shards[entry.shard_id] = open(path, "rb")
            shard = shards[entry.shard_id]
            shard.seek(entry.offset)
            raw = shard.read(entry.size)
            if len(raw) != entry.size:
                raise ValueError(f"{path}: truncated: tensor {entry.name!r} needs bytes {entry.offset}.."
                                 f"{entry.offset + entry.size}, the file ends at {entry.offset + len(raw)}")
            if verify and entry.crc32c is not None and mask_crc(crc32c(raw)) != entry.crc32c:
                raise ValueError(f"{path}: tensor {entry.name!r} fails its crc32c check (corrupted file)")
            arrays[entry.name] = _array(entry, raw, path)
    finally:
        for shard in shards.values():
            shard.close()
    return arrays
