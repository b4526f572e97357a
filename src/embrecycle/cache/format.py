"""On-disk layout of a cache shard (format version 1). See ``docs/cache-format.md``.

A shard is three append-only files written by exactly one writer:

- ``<name>.hidden``: the states of every token of every document, rows of
  ``hidden_size`` values in the cache dtype, little endian, no header;
- ``<name>.tokens``: one ``int32[4]`` row per token: input id, word index
  (-1 for special tokens), character start and end;
- ``<name>.index``: a 64-byte header, then one 64-byte record per document
  (:data:`RECORD_DTYPE`). A record is appended only after its rows were
  written and flushed, so any record that passes its checksum points to
  complete data; a torn last record (a killed write) is ignored.
"""

from __future__ import annotations

import zlib

import numpy as np

FORMAT_VERSION = 1
MAGIC = b"EMBRIDX1"
HEADER_SIZE = 64
RECORD_SIZE = 64
TOKEN_FIELDS = 4  # input_id, word_id, char_start, char_end

RECORD_DTYPE = np.dtype(
    [
        ("key", "V32"),  # sha256 of the document's content and the cache settings
        ("row", "<u8"),  # first row in .hidden / .tokens
        ("n_tokens", "<u4"),
        ("hidden_crc", "<u4"),  # crc32 of the document's .hidden bytes
        ("tokens_crc", "<u4"),  # crc32 of the document's .tokens bytes
        ("flags", "<u4"),  # bit 0: the document was truncated to max_length
        ("reserved", "<u4"),
        ("record_crc", "<u4"),  # crc32 of the 60 bytes before it
    ]
)
assert RECORD_DTYPE.itemsize == RECORD_SIZE

FLAG_TRUNCATED = 1

# Storage dtypes: numpy has no bfloat16, so it is stored as its raw 16 bits.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
    "float32": np.dtype("<f4"),
}


def make_header(hidden_size: int, dtype: str) -> bytes:
    """The 64-byte header of an index file."""
    body = MAGIC + np.array([FORMAT_VERSION, hidden_size], "<u4").tobytes() + dtype.encode().ljust(16, b"\0")
    return body.ljust(HEADER_SIZE, b"\0")


def parse_header(raw: bytes) -> tuple[int, int, str]:
    """``(format_version, hidden_size, dtype)`` of an index header; raises ValueError if not one."""
    if len(raw) < HEADER_SIZE or raw[:8] != MAGIC:
        raise ValueError("not an embrecycle index file (bad magic)")
    if any(raw[32:HEADER_SIZE]):
        raise ValueError("damaged: its reserved bytes 32-63 are not zero")
    version, hidden = np.frombuffer(raw[8:16], "<u4")
    dtype = raw[16:32].rstrip(b"\0").decode()
    return int(version), int(hidden), dtype


def seal_records(records: np.ndarray) -> np.ndarray:
    """Fill ``record_crc`` of every record in place and return them."""
    raw = records.view(np.uint8).reshape(len(records), RECORD_SIZE)
    for i in range(len(records)):
        records["record_crc"][i] = zlib.crc32(raw[i, : RECORD_SIZE - 4].tobytes())
    return records


def valid_records(records: np.ndarray) -> np.ndarray:
    """Boolean mask of the records whose ``record_crc`` matches."""
    raw = records.view(np.uint8).reshape(len(records), RECORD_SIZE)
    ok = np.empty(len(records), dtype=bool)
    for i in range(len(records)):
        ok[i] = zlib.crc32(raw[i, : RECORD_SIZE - 4].tobytes()) == int(records["record_crc"][i])
    return ok
