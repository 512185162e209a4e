"""Safe encoding and decoding of shard members: `.npy` without pickle and `.json`; nothing else is decoded.

WebDataset's default decoders unpickle `.pyd` / `.pickle` members (arbitrary code execution from a tar). Readers
in cmgan decode only the names in `schema.MEMBERS` and `schema.META_KEY`, with these functions; any other member
is dropped undecoded (a `DecodeError` when `strict=True`).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from cmgan.data import schema


class DecodeError(ValueError):
    """A member cannot be decoded safely; the message names the sample key and the member."""


def encode_npy(array: np.ndarray) -> bytes:
    """`.npy` bytes of a plain (non-object) array."""
    if array.dtype.hasobject:
        raise ValueError(f"refusing to store an object array (dtype {array.dtype}): it would need pickle")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_npy(data: bytes, key: str = "?", name: str = "?") -> np.ndarray:
    """Array from `.npy` bytes; never unpickles (object arrays and pickles raise DecodeError)."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # ValueError for object arrays / pickles, others for garbage
        problem = f"not a plain .npy array ({type(e).__name__}: {e})"
        raise DecodeError(f"sample {key!r}, member {name!r}: {problem}") from None


def decode_json(data: bytes, key: str = "?", name: str = "?") -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except Exception as e:
        raise DecodeError(f"sample {key!r}, member {name!r}: not valid UTF-8 JSON ({type(e).__name__}: {e})") from None


KNOWN_MEMBERS = frozenset(schema.MEMBERS) | {schema.META_KEY}


def decode_sample(sample: dict[str, Any], keep: tuple[str, ...] | None = None, strict: bool = False) -> dict[str, Any]:
    """Decode the members of a raw WebDataset sample dict ({"__key__": str, "mr.npy": bytes, ...}).

    keep: member names to decode (default: every known member present); other members are dropped.
    strict: raise DecodeError on an unknown member (verify uses this) instead of dropping it silently.
    returns {"__key__": str, "__url__": str if present, name: np.ndarray | dict, ...}
    """
    key = str(sample.get("__key__", "?"))
    out: dict[str, Any] = {"__key__": key}
    if "__url__" in sample:
        out["__url__"] = sample["__url__"]
    for name, value in sample.items():
        if name.startswith("__"):
            continue
        if name not in KNOWN_MEMBERS:
            if strict:
                raise DecodeError(f"sample {key!r}: unexpected member {name!r} (not in the schema; never decoded)")
            continue
        if keep is not None and name not in keep:
            continue
        if not isinstance(value, (bytes, bytearray)):
            raise DecodeError(f"sample {key!r}, member {name!r}: expected raw bytes, got {type(value).__name__}")
        out[name] = decode_json(value, key, name) if name.endswith(".json") else decode_npy(value, key, name)
    return out
