#!/usr/bin/env python3
"""Writes the GGUF dequantization goldens that tests/model/gguf_quants_test.cc reads: for every
type Tessera dequantizes, a few blocks of random bytes and their values as the gguf package's
gguf.quants.dequantize computes them.

Run: python3 make_quant_goldens.py   (needs gguf and numpy; written with gguf 0.19.0)
It writes beside itself, and the same files every time (the random generator is seeded).

For each type, named in lower case (q4_k, ...):
  <name>.blocks  the blocks' bytes, as stored in a GGUF file
  <name>.f32     the dequantized elements, little-endian float32

The bytes are random except the f16 scale fields (d, m, dmin), which are finite: random
moderate values of either sign, and on odd blocks zeros of either sign, subnormals or the
largest half, so that every element is finite. F32, F16 and BF16 start with NaNs (quiet and signaling, with
payloads), infinities, zeros, subnormals and the extremes, then random bit patterns.
"""

import pathlib

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize
from gguf.constants import GGML_QUANT_SIZES

OUT = pathlib.Path(__file__).resolve().parent

# Byte offsets of the f16 scale fields in one block.
HALF_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}
BLOCKS = 8
FLOAT_ELEMENTS = 64

# The scale fields of the odd blocks 1, 3, 5, 7, by number of fields (None: random): zeros of
# either sign, the smallest and the largest subnormal, the largest finite half.
SPECIAL_HALVES = {
    1: [(0x8000,), (0x0001,), (0x03FF,), (0xFBFF,)],
    2: [(0x0000, None), (None, 0x8000), (0x0001, 0x03FF), (0x7BFF, 0xFBFF)],
}

SPECIAL_BITS = {
    T.F32: [0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFA00123,
            0x7FC12345, 0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x00800000,
            0x7F7FFFFF, 0xFF7FFFFF, 0x3F800000, 0xBF800000],
    T.F16: [0x7C00, 0xFC00, 0x7E00, 0xFE00, 0x7C01, 0xFD23, 0x7E7F, 0x0000, 0x8000, 0x0001,
            0x83FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00, 0xBC00],
    T.BF16: [0x7F80, 0xFF80, 0x7FC0, 0xFFC0, 0x7F81, 0xFFA3, 0x7FC5, 0x0000, 0x8000, 0x0001,
             0x807F, 0x0080, 0x7F7F, 0xFF7F, 0x3F80, 0xBF80],
}


def random_half(rng):
    """A random finite f16 of moderate magnitude (2^-14 to 2^2), either sign."""
    value = np.float16(rng.choice([-1.0, 1.0]) * 2.0 ** rng.uniform(-14, 2))
    return int(np.array([value], dtype=np.float16).view(np.uint16)[0])


def quant_blocks(qtype, rng):
    elements, block_bytes = GGML_QUANT_SIZES[qtype]
    fields = HALF_FIELDS[qtype]
    raw = rng.integers(0, 256, size=(BLOCKS, block_bytes), dtype=np.uint8)
    for block in range(BLOCKS):
        special = SPECIAL_HALVES[len(fields)][block // 2] if block % 2 else (None,) * len(fields)
        for offset, bits in zip(fields, special):
            if bits is None:
                bits = random_half(rng)
            raw[block, offset] = bits & 0xFF
            raw[block, offset + 1] = bits >> 8
    return raw.reshape(-1), BLOCKS * elements


def float_elements(qtype, rng):
    bits = SPECIAL_BITS[qtype]
    if qtype == T.F32:
        rest = rng.integers(0, 2**32, size=FLOAT_ELEMENTS - len(bits), dtype=np.uint32)
        values = np.concatenate([np.array(bits, dtype=np.uint32), rest]).astype("<u4")
    else:
        rest = rng.integers(0, 2**16, size=FLOAT_ELEMENTS - len(bits), dtype=np.uint16)
        values = np.concatenate([np.array(bits, dtype=np.uint16), rest]).astype("<u2")
    return values.view(np.uint8), FLOAT_ELEMENTS


def main():
    rng = np.random.default_rng(20240611)
    for qtype in [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K,
                  T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]:
        if qtype in SPECIAL_BITS:
            raw, elements = float_elements(qtype, rng)
        else:
            raw, elements = quant_blocks(qtype, rng)
        values = np.asarray(dequantize(raw.copy(), qtype), dtype=np.float32).reshape(-1)
        assert values.size == elements, (qtype.name, values.size, elements)
        if qtype not in SPECIAL_BITS:
            assert np.isfinite(values).all(), qtype.name
        name = qtype.name.lower()
        raw.tofile(OUT / f"{name}.blocks")
        values.view(np.uint32).astype("<u4").tofile(OUT / f"{name}.f32")
        print(f"{name}: {elements} elements, {raw.size} bytes")


if __name__ == "__main__":
    main()
