""".npy decoding at loader rates: :func:`c2p.schema.decode_npy` with the header parse cached.

Every sample carries two ``.npy`` members (points, image features); numpy parses each
header with ``ast.literal_eval``, which costs more than copying the data.
"""

from __future__ import annotations

import io

import numpy as np

from c2p.schema import decode_npy

# .npy header bytes -> (dtype, shape, Fortran order, data offset). Shards hold a handful of
# distinct headers (one per array shape), and parsing one costs numpy a literal_eval:
# caching them makes decoding the two arrays per sample ~6x cheaper (37 -> 6 us for 8192x3 float16).
_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool, int]] = {}
_NPY_HEADERS_MAX = 256


def decode_npy_cached(data: bytes) -> np.ndarray:
    """``.npy`` bytes → read-only array, as :func:`c2p.schema.decode_npy` but with the header parse cached."""
    if data[:6] != b"\x93NUMPY" or len(data) < 12:
        return decode_npy(data)  # not .npy: the schema's decoder raises the right error
    offset = 10 + int.from_bytes(data[8:10], "little") if data[6] == 1 else 12 + int.from_bytes(data[8:12], "little")
    header = data[:offset]
    parsed = _NPY_HEADERS.get(header)
    if parsed is None:
        stream = io.BytesIO(data)
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(stream)
        if dtype.hasobject or stream.tell() != offset:
            return decode_npy(data)  # pickled objects are refused there
        parsed = (dtype, shape, fortran, offset)
        if len(_NPY_HEADERS) < _NPY_HEADERS_MAX:
            _NPY_HEADERS[header] = parsed
    dtype, shape, fortran, offset = parsed
    count = int(np.prod(shape))
    if len(data) - offset < count * dtype.itemsize:
        raise ValueError(f"npy data of {len(data) - offset} bytes; expected {count * dtype.itemsize} for {shape} {dtype}")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
