"""MATLAB .mat files (Stanford Cars' and Flowers-102's annotations, SBD's masks) read with scipy, every failure a
MatFileError (a ValueError) naming the file.

scipy.io.loadmat is not safe on damaged files. Besides the exceptions its parser meets (IndexError, OSError,
zlib.error, TypeError, ZeroDivisionError, ... for a truncated or corrupted file; NotImplementedError for a v7.3
HDF5 file), scipy 1.17.1's compiled v5 reader (_mio5_utils.pyx, read_numeric and read_char) looks a data element's
type up in a C table unchecked, and its chars_to_strings reads the last dimension of an array that has none, so one
corrupted byte (a type word; a complex flag, which makes it read the next variable's tag as numbers; a dimension
count) ends the process with a segmentation fault (found by mutating savemat's files: 20,000 mutated files read
without a crash since). So a v5 file is walked here first, element by element in the order scipy reads them
(every variable, struct fields and cell contents), and handed to scipy only if every element scipy would look up
has a type its table holds, every array has 2 dimensions or more, every size stays inside its parent and
compressed variables inflate to at most MAX_INFLATED_BYTES. The walk accepts the classes these datasets' files use
(numeric and logical arrays, char, cell, struct, sparse), not objects or function handles.
"""
import io
import struct
import zlib
from pathlib import Path

try:  # scipy is a deepres dependency, optional only so that `import deepres.data` works without it
    from scipy.io import loadmat as _scipy_loadmat
except ImportError:
    _scipy_loadmat = None

V5_HEADER_BYTES = 128  # text (116), subsystem offset (8), version (2), endian indicator (2)
MI_INT8, MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED, MI_UTF8 = 1, 5, 6, 14, 15, 16
# The data types scipy's dtype table holds (miINT8..miUINT64, miUTF8..miUTF32): the only ones it may meet as numbers
# or characters. 8, 10, 11 and 19 are reserved in MATLAB's format and absent from the table, like 14 and 15.
TABLE_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 16, 17, 18})
MX_CELL, MX_STRUCT, MX_CHAR, MX_SPARSE = 1, 2, 4, 5
MX_NUMERIC = range(6, 16)  # double, single, int8 .. uint64
MAX_INFLATED_BYTES = 1 << 28  # 256 MiB per compressed variable, against decompression bombs; an SBD mask (VOC
# images are at most 500x500) inflates to well under 1 MiB
MAX_DEPTH = 64  # nested structs and cells; SBD's GTcls nests 3 deep (struct, cell, sparse)
MAX_DIMS = 32  # scipy reads at most 32 dimensions (128 bytes)


class MatFileError(ValueError):
    """A .mat file that cannot be read; `.path` names it, `.reason` says why."""

    def __init__(self, path, reason: str = ""):
        # one-argument form too, so DataLoader workers can re-raise it as type(e)(message)
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}" if reason else str(path))

    def __reduce__(self):
        return type(self), (self.path, self.reason)


class _Elements:
    """Data elements of data[offset:end] read one after another, as scipy's VarReader5 reads them."""

    def __init__(self, data: bytes, offset: int, end: int, order: str, path):
        self.data, self.offset, self.end, self.order, self.path = data, offset, end, order, path

    def fail(self, reason: str) -> MatFileError:
        return MatFileError(self.path, f"corrupt MATLAB v5 data: {reason}")

    def next(self, what: str, full: bool = False) -> tuple[int, int, int]:
        """(type, start of the data, byte count) of the next element; a small element's data lies in its tag.
        full: a full 8-byte tag is required (scipy reads matrix tags without the small-element rule)."""
        offset = self.offset
        if self.end - offset < 8:
            raise self.fail(f"{what} at byte {offset}: a tag needs 8 bytes, {max(self.end - offset, 0)} left")
        first, size = struct.unpack_from(self.order + "II", self.data, offset)
        if first >> 16 and not full:  # small data element: type and count (<= 4) in one word, data in the next
            mdtype, size = first & 0xFFFF, first >> 16
            if size > 4:
                raise self.fail(f"{what} at byte {offset}: a small element of {size} bytes")
            self.offset = offset + 8
            return mdtype, offset + 4, size
        body = offset + 8
        if size > self.end - body:
            raise self.fail(f"{what} at byte {offset} holds {size} bytes, {self.end - body} left")
        self.offset = body + size + (-size) % 8  # elements are padded to 8 bytes
        return first, body, size

    def table_typed(self, what: str) -> None:
        start = self.offset
        mdtype, _, _ = self.next(what)
        if mdtype not in TABLE_TYPES:
            raise self.fail(f"{what} at byte {start}: data type {mdtype} is no number or text type")

    def int32s(self, what: str, max_bytes: int) -> list[int]:
        mdtype, body, size = self.next(what)
        if mdtype not in (MI_INT32, MI_UINT32) or size % 4 or size > max_bytes:
            raise self.fail(f"{what}: type {mdtype}, {size} bytes (expected int32 values, at most {max_bytes} bytes)")
        return list(struct.unpack_from(f"{self.order}{size // 4}i", self.data, body))

    def text(self, what: str) -> int:
        mdtype, _, size = self.next(what)
        if mdtype not in (MI_INT8, MI_UTF8):
            raise self.fail(f"{what}: type {mdtype}, expected int8 characters")
        return size

    def matrix(self, depth: int) -> None:
        """The next element, a matrix (a cell's content or a struct field), checked with everything inside it."""
        mdtype, body, size = self.next("a matrix", full=True)
        if mdtype != MI_MATRIX:
            raise self.fail(f"expected a matrix at byte {body - 8}, found type {mdtype}")
        if size:  # an empty matrix is its tag alone
            inner = _Elements(self.data, body, self.end, self.order, self.path)
            inner.array(depth + 1)
            if inner.offset != self.offset:  # scipy reads the content, not the stated size: they must agree
                raise self.fail(f"the matrix at byte {body - 8} states {size} bytes but holds {inner.offset - body}")

    def array(self, depth: int) -> None:
        """One matrix's content (array flags, dimensions, name, then its class's elements), as scipy reads it."""
        if depth > MAX_DEPTH:
            raise self.fail(f"variables nest more than {MAX_DEPTH} deep")
        mdtype, body, size = self.next("array flags", full=True)
        if mdtype != MI_UINT32 or size != 8:  # scipy reads the 8 bytes after this tag whatever it says
            raise self.fail(f"array flags at byte {body - 8}: type {mdtype}, {size} bytes (expected uint32, 8)")
        flags = struct.unpack_from(self.order + "I", self.data, body)[0]
        mclass, imaginary = flags & 0xFF, bool(flags >> 11 & 1)
        dims = self.int32s("dimensions", 4 * MAX_DIMS)
        # MATLAB arrays have 2 dimensions or more; scipy's chars_to_strings reads past the shape of one with none
        if len(dims) < 2 or any(dim < 0 for dim in dims):
            raise self.fail(f"dimensions {dims}")
        self.text("array name")
        count = 1
        for dim in dims:
            count *= dim
        if mclass in MX_NUMERIC:
            for part in ("real part", "imaginary part")[:1 + imaginary]:
                self.table_typed(part)
        elif mclass == MX_CHAR:
            self.table_typed("characters")
        elif mclass == MX_SPARSE:
            for part in ("row indices", "column pointers", "values", "imaginary values")[:3 + imaginary]:
                self.table_typed(part)
        elif mclass == MX_CELL:
            for _ in range(count):
                self.matrix(depth)
        elif mclass == MX_STRUCT:
            (name_length,) = self.int32s("field name length", 4) or (0,)
            if name_length <= 0:
                raise self.fail(f"field name length {name_length}")
            fields = self.text("field names") // name_length
            for _ in range(fields * count if fields else 0):
                self.matrix(depth)
        else:
            raise MatFileError(self.path, f"holds a MATLAB array of class {mclass} (an object, function handle or "
                                          "unknown class), which these datasets' files never do")


def _inflate(compressed: bytes, path, offset: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        inflated = inflater.decompress(compressed, MAX_INFLATED_BYTES)
    except zlib.error as e:
        raise MatFileError(path, f"corrupt compressed variable at byte {offset} ({e})") from None
    if inflater.unconsumed_tail:
        raise MatFileError(path, f"the compressed variable at byte {offset} inflates to more than "
                                 f"{MAX_INFLATED_BYTES >> 20} MiB")
    if not inflater.eof:
        raise MatFileError(path, f"truncated: the compressed variable at byte {offset} ends early")
    return inflated


def _check_v5(data: bytes, order: str, path) -> None:
    """Every variable of a v5 file, as scipy's MatFile5Reader.get_variables walks them: a full tag (miMATRIX, or
    miCOMPRESSED holding one), the variable at tag + 8, the next at tag + 8 + byte count (no padding)."""
    offset = V5_HEADER_BYTES
    while offset < len(data):
        if len(data) - offset < 8:
            raise MatFileError(path, f"truncated: a variable tag at byte {offset} needs 8 bytes")
        mdtype, size = struct.unpack_from(order + "II", data, offset)
        body = offset + 8
        if not 0 < size <= len(data) - body:
            raise MatFileError(path, f"truncated: the variable at byte {offset} states {size} bytes, "
                                     f"{len(data) - body} left")
        if mdtype == MI_COMPRESSED:
            inflated = _inflate(data[body:body + size], path, offset)
            elements = _Elements(inflated, 0, len(inflated), order, path)
        elif mdtype == MI_MATRIX:
            elements = _Elements(data, offset, body + size, order, path)
        else:
            raise MatFileError(path, f"corrupt MATLAB v5 data: the variable at byte {offset} has type {mdtype}")
        elements.matrix(0)
        offset = body + size


def check_mat_file(data: bytes, path) -> None:
    """MatFileError unless `data` is a MATLAB file scipy can read without crashing: v7.3 (HDF5) is refused by name,
    a v5 file's elements are checked (see the module docstring); a v4 file is left to scipy's pure-Python reader.
    The version is told as scipy tells it (scipy.io.matlab._miobase._get_matfile_version), so the walk covers
    exactly the files scipy's v5 reader would parse."""
    if len(data) < V5_HEADER_BYTES or 0 in data[:4]:
        return  # v4 (a zero in the first 4 bytes), or too short for scipy to read as anything
    little = data[126:128] == b"IM"
    major = data[124 + (data[126] == ord("I"))]
    if major == 2:
        raise MatFileError(path, "a MATLAB v7.3 (HDF5) file, which scipy cannot read; save it in MATLAB with "
                                 "save(..., '-v7') (the datasets ship v5 files)")
    if major == 1:
        _check_v5(data, "<" if little else ">", path)


def load_mat(path, **options) -> dict:
    """scipy.io.loadmat(path, **options) after check_mat_file; MatFileError (naming the file) for any file scipy
    cannot read, a missing one included (as images.open_image treats a missing image)."""
    if _scipy_loadmat is None:
        raise ImportError(f"reading {path} needs scipy (a deepres dependency): pip install scipy")
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MatFileError(path, "no such file") from None
    except OSError as e:
        raise MatFileError(path, f"cannot be read ({e.strerror or e})") from None
    check_mat_file(data, path)
    try:
        contents = _scipy_loadmat(io.BytesIO(data), **options)
    except Exception as e:  # noqa: BLE001 - whatever scipy's parser meets in a damaged file (see the docstring)
        raise MatFileError(path, f"not a readable MATLAB file ({type(e).__name__}: {e})") from None
    for name, value in contents.items():  # scipy keeps going past a variable it cannot read, leaving this string
        if isinstance(value, str) and value.startswith("Read error: "):
            raise MatFileError(path, f"variable {name!r} is not readable ({value[len('Read error: '):]})")
    return contents
