"""Binary array codec shared with ``js/src/codec.ts``.

An array crosses to the browser as ``{"view": bytes, "dtype": "float16", "shape": [..]}``:
ipywidgets lifts the bytes out of the JSON into a binary buffer (a ``DataView`` in JS), so
large arrays never become JSON lists. Bytes are little-endian, C order.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np
import torch

#: No single comm message may exceed this (Jupyter's default limits are near it).
MAX_MESSAGE_BYTES = 10 * 2**20
#: Chunks of lazily sent arrays stay well under the limit.
CHUNK_BYTES = 4 * 2**20

DTYPES = ("float16", "float32", "float64", "uint8", "int8", "uint16", "int16", "uint32", "int32")


class Encoded(TypedDict):
    view: bytes
    dtype: str
    shape: list[int]


def to_numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        if array.dtype == torch.bfloat16:
            array = array.float()
        return array.numpy()
    return np.asarray(array)


def encode(array: Any, dtype: str | None = None) -> Encoded:
    """Encode an array (numpy, torch or nested lists) as bytes + dtype + shape."""
    arr = to_numpy(array)
    dtype = dtype or str(arr.dtype)
    if dtype not in DTYPES:
        raise ValueError(f"Unsupported dtype {dtype!r}; use one of {DTYPES}.")
    arr = np.ascontiguousarray(arr.astype(np.dtype(dtype).newbyteorder("<"), copy=False))
    return {"view": arr.tobytes(), "dtype": dtype, "shape": [int(s) for s in arr.shape]}


def decode(encoded: dict[str, Any]) -> np.ndarray:
    """The inverse of :func:`encode` (accepts bytes, memoryview or bytearray)."""
    dtype = np.dtype(encoded["dtype"]).newbyteorder("<")
    flat = np.frombuffer(bytes(encoded["view"]), dtype=dtype)
    return flat.reshape(encoded["shape"])


def nbytes(encoded: dict[str, Any]) -> int:
    return len(encoded["view"])


def row_chunks(n_rows: int, row_bytes: int, limit: int = CHUNK_BYTES) -> list[tuple[int, int]]:
    """Split ``n_rows`` rows of ``row_bytes`` each into ``[start, stop)`` ranges under ``limit``."""
    per = max(1, limit // max(1, row_bytes))
    return [(r, min(n_rows, r + per)) for r in range(0, n_rows, per)]
