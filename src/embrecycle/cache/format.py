"""On-disk layout of a cache shard (format version 1; 2 for quantised dtypes). See ``docs/cache-format.md``.

A shard is three append-only files written by exactly one writer:

- ``<name>.hidden``: the states of every token of every document, one fixed-width row per
  token in the cache's storage dtype (:mod:`.codecs`: values, or codes and scales), little
  endian, no header;
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

from .codecs import ALIASES, CODECS, codec_for

FORMAT_VERSION = 1
"""The format version of caches in a floating-point dtype (what every embrecycle before 0.3 reads)."""
QUANTISED_FORMAT_VERSION = 2
"""The format version of caches in a quantised dtype (codes and scales per row; see :mod:`.codecs`)."""
READABLE_VERSIONS = (FORMAT_VERSION, QUANTISED_FORMAT_VERSION)
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

STORAGE_DTYPES = (*sorted(CODECS), *sorted(ALIASES))
"""Every storage dtype name a setting takes (aliases included; a cache records the full name)."""


def format_version(dtype: str) -> int:
    """The format version a cache in storage dtype ``dtype`` is written with."""
    return QUANTISED_FORMAT_VERSION if codec_for(dtype).quantised else FORMAT_VERSION


def make_header(hidden_size: int, dtype: str) -> bytes:
    """The 64-byte header of an index file."""
    version = format_version(dtype)
    body = MAGIC + np.array([version, hidden_size], "<u4").tobytes() + dtype.encode().ljust(16, b"\0")
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
