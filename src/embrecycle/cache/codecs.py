"""How a cache stores its states: one :class:`Codec` per storage dtype.

Floating-point dtypes store each value as is (``float32``, ``float16``, ``bfloat16`` as its raw
16 bits). Quantised dtypes store integer codes with symmetric scales, and every row (one token's
states) stays fixed-width so that the shard layout, its checksums and its crash safety are the
same for every dtype: a row is its codes followed by its scales (float16).

==============  =======  ===========================  =====================================================
dtype           bits     one scale per                row bytes (H = hidden size, g = group)
==============  =======  ===========================  =====================================================
``float32``     32       -                            4 H
``float16``     16       -                            2 H
``bfloat16``    16       -                            2 H
``int8-token``  8        token (all H channels)       H + 2
``int8-g64``    8        64 channels of a token       H + 2 H / 64
``int4-g64``    4        64 channels of a token       H / 2 + 2 H / 64
``int4-g32``    4        32 channels of a token       H / 2 + 2 H / 32
==============  =======  ===========================  =====================================================

Why per token or per group, never per tensor: a transformer's residual stream has a few channels
with very large values (Bondarenko et al., EMNLP 2021). One scale for a whole tensor spends the
code range on them and rounds every other channel to a handful of levels; a scale per token keeps
the damage within the token, a scale per group of channels within the group.

``int8`` and ``int4`` are aliases of the defaults chosen from the measurements
(``benchmarks/results/quantised_cache.md``): :data:`ALIASES`.

Reading dequantises straight into float32 (``code * scale``); the error of each value is at most
half a step of its group, ``max(max|x| / qmax, 2^-14) / 2`` with ``qmax`` 127 (int8) or 7 (int4),
plus the rounding of the scale to float16 (a relative 2^-11): :meth:`Codec.error_bound`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from embrecycle.errors import UnstorableStatesError

__all__ = ["ALIASES", "CODECS", "Codec", "FloatCodec", "IntCodec", "canonical_dtype", "codec_for"]

SCALE_DTYPE = np.dtype("<f2")
MIN_SCALE = 2.0**-14
"""The smallest non-zero scale: float16's smallest normal number (a group whose values are all smaller is coded
in steps of it: each value within half a step, 3e-5)."""
SCALE_BYTES = SCALE_DTYPE.itemsize
FLOAT16_MAX = 65504.0


@dataclass(frozen=True)
class Codec:
    """The storage of one dtype: stored items per row, and the conversions both ways."""

    name: str

    @property
    def quantised(self) -> bool:
        return False

    @property
    def item_dtype(self) -> np.dtype:
        """The numpy dtype of a stored item (the ``.hidden`` file is rows of ``width`` of them)."""
        raise NotImplementedError

    def width(self, hidden_size: int) -> int:
        """Stored items per row (one token)."""
        raise NotImplementedError

    def row_bytes(self, hidden_size: int) -> int:
        return self.width(hidden_size) * self.item_dtype.itemsize

    def problem(self, hidden_size: int) -> str | None:
        """Why this dtype cannot store states of ``hidden_size`` channels (None: it can)."""
        return None

    def encode(self, hidden: torch.Tensor) -> np.ndarray:
        """``(..., hidden_size)`` states (any float dtype, on the CPU) as ``(..., width)`` stored items."""
        raise NotImplementedError

    def decode(self, stored: np.ndarray, hidden_size: int) -> torch.Tensor:
        """``(..., width)`` stored items as ``(..., hidden_size)`` states: float32, or the stored float dtype
        (bfloat16, float16) for the caller to convert once."""
        raise NotImplementedError

    def error_bound(self, hidden: torch.Tensor) -> torch.Tensor:
        """The largest absolute error a round trip may make on each value of ``hidden`` (float32)."""
        raise NotImplementedError

    @property
    def max_abs(self) -> float:
        """The largest magnitude this dtype stores without turning it into inf or NaN."""
        raise NotImplementedError

    def check_storable(
        self, hidden: torch.Tensor, names: Sequence[str], lengths: Sequence[int] | torch.Tensor | None = None
    ) -> None:
        """Refuse states this dtype would corrupt silently: NaN, infinite values, or magnitudes beyond
        :attr:`max_abs` (a float16 cache would store them as inf; a quantised one would turn their whole
        group into zeros or NaN).

        Args:
            hidden: ``(documents, tokens, hidden_size)`` states (one pass over them, no float32 copy).
            names: One name per document (its ``file:line``), for the message.
            lengths: Each document's real tokens (the rest is padding, not checked); default all.

        Raises:
            UnstorableStatesError: naming the first such document, what it holds and the fix.
        """
        peak = hidden.detach().abs().amax(dim=-1).reshape(len(names), -1).float()  # NaN carries through amax
        if lengths is not None:
            real = torch.arange(peak.shape[1]) < torch.as_tensor(lengths).reshape(-1, 1)
            peak = torch.where(real, peak, torch.zeros((), dtype=peak.dtype))
        bad = ~(peak.amax(dim=1) <= self.max_abs)  # NaN and inf compare False
        if not bool(bad.any()):
            return
        i = int(bad.nonzero()[0])
        row = hidden[i].detach().float().reshape(-1, hidden.shape[-1])
        if lengths is not None:
            row = row[: int(torch.as_tensor(lengths).reshape(-1)[i])]
        n_nan, n_inf = int(torch.isnan(row).sum()), int(torch.isinf(row).sum())
        more = f" ({int(bad.sum()) - 1} more documents in this batch too)" if int(bad.sum()) > 1 else ""
        if n_nan or n_inf:
            raise UnstorableStatesError(
                f"document {names[i]}: its states hold {n_nan} NaN and {n_inf} infinite values{more}. They come "
                "from the model itself, most often a float16 overflow: build with --precision fp32 or bf16 (or "
                "check the model's weights); nothing of this batch was stored."
            )
        largest = float(row.abs().max())
        raise UnstorableStatesError(
            f"document {names[i]}: its states reach |value| {largest:.4g}, beyond the {self.max_abs:.4g} that "
            f"storage dtype {self.name!r} holds{more}. Store them as float32 or bfloat16 (--dtype); nothing of "
            "this batch was stored."
        )


@dataclass(frozen=True)
class FloatCodec(Codec):
    """A floating-point dtype, stored value by value."""

    torch_dtype: torch.dtype = torch.float16

    @property
    def item_dtype(self) -> np.dtype:
        items: dict[torch.dtype, np.dtype] = {
            torch.float32: np.dtype("<f4"),
            torch.float16: np.dtype("<f2"),
            torch.bfloat16: np.dtype("<u2"),  # numpy has no bfloat16: its raw 16 bits
        }
        return items[self.torch_dtype]

    def width(self, hidden_size: int) -> int:
        return hidden_size

    @property
    def max_abs(self) -> float:
        return float(torch.finfo(self.torch_dtype).max)

    def encode(self, hidden: torch.Tensor) -> np.ndarray:
        t = hidden.to(self.torch_dtype)
        if self.torch_dtype == torch.bfloat16:  # numpy has no bfloat16: its raw 16 bits
            return t.view(torch.int16).numpy().view(np.uint16)
        return t.numpy()

    def decode(self, stored: np.ndarray, hidden_size: int) -> torch.Tensor:
        t = torch.from_numpy(stored)
        return t.view(torch.bfloat16) if self.torch_dtype == torch.bfloat16 else t

    def error_bound(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.float().abs()
        if self.torch_dtype == torch.float32:
            return torch.zeros_like(x)
        mantissa = 10 if self.torch_dtype == torch.float16 else 7
        return x * 2.0 ** -(mantissa + 1) + (6e-8 if self.torch_dtype == torch.float16 else 0.0)


@dataclass(frozen=True)
class IntCodec(Codec):
    """Symmetric integer codes with one float16 scale per group of ``group`` channels (None: per token)."""

    bits: int = 8
    group: int | None = None

    @property
    def quantised(self) -> bool:
        return True

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1  # 127 or 7: symmetric, -qmax..qmax

    @property
    def item_dtype(self) -> np.dtype:
        return np.dtype("u1")

    @property
    def max_abs(self) -> float:
        return FLOAT16_MAX * self.qmax  # the largest scale float16 holds

    def groups(self, hidden_size: int) -> int:
        return 1 if self.group is None else hidden_size // self.group

    def _code_bytes(self, hidden_size: int) -> int:
        return hidden_size * self.bits // 8

    def width(self, hidden_size: int) -> int:
        return self._code_bytes(hidden_size) + SCALE_BYTES * self.groups(hidden_size)

    def _misfit(self, hidden_size: int) -> str | None:
        if self.group is not None and hidden_size % self.group:
            return (
                f"dtype {self.name!r} scales groups of {self.group} channels, and the hidden size {hidden_size} is "
                f"not a multiple of {self.group}"
            )
        if self.bits == 4 and hidden_size % 2:
            return f"dtype {self.name!r} packs two channels per byte; the hidden size {hidden_size} is odd"
        return None

    def problem(self, hidden_size: int) -> str | None:
        why = self._misfit(hidden_size)
        if why is None:
            return None
        fit = [c.name for c in CODECS.values() if isinstance(c, IntCodec) and not c._misfit(hidden_size)]
        return f"{why}; choose {' or '.join(fit) if fit else 'no quantised dtype'} or a float dtype"

    def _scales(self, x: torch.Tensor) -> torch.Tensor:
        """Per-group scales, rounded to float16 (what is stored), as float32: ``(..., groups)``. A non-zero
        scale is at least :data:`MIN_SCALE`, float16's smallest normal number: smaller ones would lose their
        precision (or round to 0) in float16."""
        step = (x.abs().amax(dim=-1) / self.qmax).clamp(min=MIN_SCALE)
        return torch.where(x.abs().amax(dim=-1) > 0, step, torch.zeros_like(step)).to(torch.float16).float()

    def encode(self, hidden: torch.Tensor) -> np.ndarray:
        x = hidden.float()
        lead, h = x.shape[:-1], x.shape[-1]
        g = self.groups(h)
        grouped = x.reshape(*lead, g, h // g)
        scale = self._scales(grouped)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale)).unsqueeze(-1)
        codes = torch.round(grouped / safe).clamp_(-self.qmax, self.qmax).to(torch.int8).reshape(*lead, h)
        if self.bits == 4:
            nibbles = (codes + 8).to(torch.uint8)  # 1..15
            packed = nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)
            code_bytes = packed.numpy()
        else:
            code_bytes = codes.numpy().view(np.uint8)
        scale_bytes = scale.to(torch.float16).numpy().astype(SCALE_DTYPE).view(np.uint8)
        return np.concatenate([code_bytes, scale_bytes], axis=-1)

    def decode(self, stored: np.ndarray, hidden_size: int) -> torch.Tensor:
        raw = torch.from_numpy(np.ascontiguousarray(stored))
        lead = raw.shape[:-1]
        n_code = self._code_bytes(hidden_size)
        g = self.groups(hidden_size)
        scales = raw[..., n_code:].contiguous().view(torch.float16).float()  # (..., g)
        if self.bits == 4:
            packed = raw[..., :n_code]
            codes = torch.stack(((packed & 0x0F), (packed >> 4)), dim=-1).reshape(*lead, hidden_size)
            # zero bytes (padding rows) decode to 0 * scale 0; stored nibbles are code + 8
            values = codes.to(torch.int8) - 8
        else:
            values = raw[..., :n_code].contiguous().view(torch.int8)
        grouped = values.reshape(*lead, g, hidden_size // g).float() * scales.unsqueeze(-1)
        return grouped.reshape(*lead, hidden_size)

    def error_bound(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.float()
        lead, h = x.shape[:-1], x.shape[-1]
        g = self.groups(h)
        amax = x.reshape(*lead, g, h // g).abs().amax(dim=-1, keepdim=True)
        step = (amax / self.qmax).clamp(min=MIN_SCALE)
        # half a step, the step rounded to float16 (relative 2^-11; values clamped at qmax lose at most that
        # much more), and float32 arithmetic
        bound = step * (0.5 + self.qmax * 2.0**-10) + 1e-6
        return bound.expand(*lead, g, h // g).reshape(*lead, h)


CODECS: dict[str, Codec] = {
    c.name: c
    for c in (
        FloatCodec("float32", torch.float32),
        FloatCodec("float16", torch.float16),
        FloatCodec("bfloat16", torch.bfloat16),
        IntCodec("int8-token", bits=8, group=None),
        IntCodec("int8-g64", bits=8, group=64),
        IntCodec("int4-g64", bits=4, group=64),
        IntCodec("int4-g32", bits=4, group=32),
    )
}
"""Every storage dtype a cache can have, by name."""

ALIASES = {"int8": "int8-g64", "int4": "int4-g32"}
"""Short names for the default quantised dtypes (a cache records the full name)."""


def canonical_dtype(name: str) -> str:
    """The storage dtype ``name`` stands for (an alias resolved)."""
    return ALIASES.get(name, name)


def codec_for(name: str) -> Codec:
    """The codec of storage dtype ``name`` (or its alias); KeyError for an unknown one."""
    return CODECS[canonical_dtype(name)]
