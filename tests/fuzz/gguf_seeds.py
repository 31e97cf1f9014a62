#!/usr/bin/env python3
"""Writes the seed corpus of the GGUF fuzz target (corpus/gguf): tiny but complete GGUF files
of a one-layer Llama and Qwen2, written by the `gguf` package, whose tensors cover the block
types Tessera reads. Run with a python that has gguf and numpy (PyPI):
    python3 tests/fuzz/gguf_seeds.py
"""

import os

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "gguf")


def k_blocks(qtype, rows, cols, rng):
    elements, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows * cols // elements, nbytes), dtype=np.uint8)
    return raw.reshape(rows, cols // elements * nbytes)


def write(name, arch, hidden, types, rng, bias=False):
    writer = gguf.GGUFWriter(os.path.join(HERE, name), arch)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(hidden)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(["a", "b", "c", "ab", "<s>", "</s>", "Ġ", "Ġa"])
    writer.add_token_types([1, 1, 1, 1, 3, 3, 1, 1])
    writer.add_token_merges(["a b", "Ġ a"])
    writer.add_bos_token_id(4)
    writer.add_eos_token_id(5)
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    kv = hidden // 2
    shapes = {"token_embd.weight": (8, hidden), "output.weight": (8, hidden),
              "blk.0.attn_q.weight": (hidden, hidden), "blk.0.attn_k.weight": (kv, hidden),
              "blk.0.attn_v.weight": (kv, hidden), "blk.0.attn_output.weight": (hidden, hidden),
              "blk.0.ffn_gate.weight": (hidden, hidden), "blk.0.ffn_up.weight": (hidden, hidden),
              "blk.0.ffn_down.weight": (hidden, hidden)}
    for vector in ("output_norm.weight", "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"):
        writer.add_tensor(vector, rng.normal(1, 0.1, hidden).astype(np.float32))
    if bias:
        for b, n in (("q", hidden), ("k", kv), ("v", kv)):
            writer.add_tensor("blk.0.attn_%s.bias" % b, rng.normal(0, 0.1, n).astype(np.float32))
    for i, (tensor, shape) in enumerate(shapes.items()):
        qtype = types[i % len(types)]
        value = rng.normal(0, 0.1, shape).astype(np.float32)
        if qtype == Q.F32:
            writer.add_tensor(tensor, value)
        elif qtype == Q.F16:
            writer.add_tensor(tensor, value.astype(np.float16))
        elif qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q2_K, Q.Q3_K):
            writer.add_tensor(tensor, k_blocks(qtype, *shape, rng), raw_dtype=qtype)
        else:
            writer.add_tensor(tensor, gguf.quants.quantize(value, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_k_quant_rows(name, rng):
    """Two rows of 256 of each K-quant type, under names a model uses."""
    writer = gguf.GGUFWriter(os.path.join(HERE, name), "llama")
    for tensor, qtype in (("token_embd.weight", Q.Q4_K), ("output.weight", Q.Q5_K),
                          ("blk.0.ffn_down.weight", Q.Q6_K), ("blk.0.ffn_up.weight", Q.Q2_K),
                          ("blk.0.ffn_gate.weight", Q.Q3_K)):
        writer.add_tensor(tensor, k_blocks(qtype, 2, 256, rng), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main():
    os.makedirs(HERE, exist_ok=True)
    rng = np.random.default_rng(1)
    write("llama_mixed.gguf", "llama", 32,
          [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1], rng)
    write("qwen2_q8_0.gguf", "qwen2", 32, [Q.Q8_0], rng, bias=True)
    write_k_quant_rows("k_quant_rows.gguf", rng)


if __name__ == "__main__":
    main()
