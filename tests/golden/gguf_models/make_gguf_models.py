#!/usr/bin/env python3
"""Makes tiny random-weight GGUF files of the architectures Tessera reads from GGUF, written
as llama.cpp's converter writes them (q and k rows of Llama reordered per head, quantized with
the `gguf` package), and records what Hugging Face transformers computes after loading each
file (transformers dequantizes GGUF to f32): the logits of every position of a fixed prompt
and a greedy continuation. The format is that of tests/golden/models/*/golden.json, so the
same check runs on them.

How it is run (outputs are committed; the tests need no Python): in a venv with torch 2.x,
transformers 4.53.3, gguf and numpy from PyPI,
    VENV/bin/python tests/golden/gguf_models/make_gguf_models.py
It writes <name>/model.gguf and <name>/golden.json beside itself, and summary.json.
"""

import json
import os

import gguf
import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, \
    Qwen2ForCausalLM

Q = gguf.GGMLQuantizationType
HERE = os.path.dirname(os.path.abspath(__file__))
PROMPT = [1, 17, 200, 35, 99, 4, 250, 63, 128, 7, 42, 3]
NEW_TOKENS = 12
VOCAB = 256


def byte_tokens():
    """GPT-2's byte-to-character map: the 256 tokens of a byte-level vocabulary."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + \
        list(range(0xAE, 0x100))
    chars, shifted = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + shifted)
            shifted += 1
    return [chars[b] for b in range(256)]


def permute(weights, heads):
    """llama.cpp's reordering of a Llama q/k projection's rows (convert_hf_to_gguf.py)."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def random_k_blocks(qtype, rows, cols, rng):
    """Random blocks of a K-quant type with small, finite scales (gguf-py cannot quantize
    K-quants): the weights are whatever these blocks dequantize to."""
    block_elements, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rows * cols // block_elements
    raw = rng.integers(0, 256, size=(blocks, block_bytes), dtype=np.uint8)

    def f16_field(offset, low, high):
        values = rng.uniform(low, high, size=blocks).astype(np.float16)
        raw[:, offset:offset + 2] = values.view(np.uint8).reshape(blocks, 2)

    if qtype in (Q.Q4_K, Q.Q5_K):
        f16_field(0, 2e-4, 6e-4)  # d
        f16_field(2, 1e-4, 4e-4)  # dmin
    elif qtype == Q.Q6_K:
        f16_field(block_bytes - 2, 1e-5, 3e-5)  # d, after ql, qh and the int8 scales
    return raw.reshape(rows, cols // block_elements * block_bytes)


def write_gguf(path, arch, config, tensors, reorder):
    """tensors: (gguf name, numpy (out, in) or (n,) f32 array or raw blocks, type)."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(byte_tokens())
    writer.add_token_types([1] * VOCAB)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for name, value, qtype in tensors:
        if reorder and name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config.num_attention_heads if "attn_q" in name else \
                config.num_key_value_heads
            value = permute(value, heads)
        if qtype == Q.F32:
            writer.add_tensor(name, np.ascontiguousarray(value, dtype=np.float32))
        elif qtype == Q.F16:
            writer.add_tensor(name, np.ascontiguousarray(value, dtype=np.float16))
        elif value.dtype == np.uint8:
            writer.add_tensor(name, value, raw_dtype=qtype)
        else:
            writer.add_tensor(name, gguf.quants.quantize(value.astype(np.float32), qtype),
                              raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name):
    if hf_name in GGUF_NAMES:
        return GGUF_NAMES[hf_name]
    parts = hf_name.split(".")  # model.layers.N.rest
    return "blk.%s.%s" % (parts[2], GGUF_NAMES[".".join(parts[3:])])


def from_torch(model, matrix_type, embedding_type):
    """The model's tensors in GGUF names; matrices quantized to matrix_type. A tied head is
    not stored (as llama.cpp's converter writes it)."""
    out = []
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        value = tensor.float().numpy()
        if value.ndim == 1:
            qtype = Q.F32
        elif name == "model.embed_tokens.weight":
            qtype = embedding_type
        else:
            qtype = matrix_type
        out.append((gguf_name(name), value, qtype))
    return out


COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, attn_implementation="eager")


def random_model(cls, config):
    model = cls(config).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.normal_(1.0, 0.1) if "norm" in n else p.normal_(0.0, 0.08)
    return model


def models(rng):
    """(name, arch, config, tensors, reorder)."""
    config = LlamaConfig(**COMMON, rope_theta=10000.0, tie_word_embeddings=False)
    model = random_model(LlamaForCausalLM, config)
    yield "llama_f32", "llama", config, from_torch(model, Q.F32, Q.F32), True
    yield "llama_f16", "llama", config, from_torch(model, Q.F16, Q.F16), True
    yield "llama_q8_0", "llama", config, from_torch(model, Q.Q8_0, Q.Q8_0), True
    yield "llama_q4_0", "llama", config, from_torch(model, Q.Q4_0, Q.Q8_0), True
    tied = LlamaConfig(**COMMON, rope_theta=100000.0, tie_word_embeddings=True)
    tied_model = random_model(LlamaForCausalLM, tied)
    # As SmolLM2-135M-Instruct.Q4_1.gguf: Q4_1 matrices, a tied Q8_0 embedding.
    yield "llama_q4_1_tied", "llama", tied, from_torch(tied_model, Q.Q4_1, Q.Q8_0), True
    qwen = Qwen2Config(**COMMON, rope_theta=1000000.0, tie_word_embeddings=False,
                       use_sliding_window=False)
    qwen_model = random_model(Qwen2ForCausalLM, qwen)
    yield "qwen2_q8_0", "qwen2", qwen, from_torch(qwen_model, Q.Q8_0, Q.Q8_0), False
    # K-quants need rows of 256: a wider, one-layer Llama of random blocks.
    wide = LlamaConfig(**dict(COMMON, hidden_size=256, intermediate_size=256,
                              num_hidden_layers=1), rope_theta=10000.0,
                       tie_word_embeddings=False)
    h, i = wide.hidden_size, wide.intermediate_size
    kv = wide.num_key_value_heads * (h // wide.num_attention_heads)
    tensors = [("token_embd.weight", rng.normal(0, 0.08, (VOCAB, h)), Q.Q8_0),
               ("output_norm.weight", rng.normal(1, 0.1, h), Q.F32),
               ("output.weight", random_k_blocks(Q.Q6_K, VOCAB, h, rng), Q.Q6_K),
               ("blk.0.attn_norm.weight", rng.normal(1, 0.1, h), Q.F32),
               ("blk.0.ffn_norm.weight", rng.normal(1, 0.1, h), Q.F32),
               ("blk.0.attn_q.weight", random_k_blocks(Q.Q4_K, h, h, rng), Q.Q4_K),
               ("blk.0.attn_k.weight", random_k_blocks(Q.Q4_K, kv, h, rng), Q.Q4_K),
               ("blk.0.attn_v.weight", random_k_blocks(Q.Q5_K, kv, h, rng), Q.Q5_K),
               ("blk.0.attn_output.weight", random_k_blocks(Q.Q4_K, h, h, rng), Q.Q4_K),
               ("blk.0.ffn_gate.weight", random_k_blocks(Q.Q5_K, i, h, rng), Q.Q5_K),
               ("blk.0.ffn_up.weight", random_k_blocks(Q.Q4_K, i, h, rng), Q.Q4_K),
               ("blk.0.ffn_down.weight", random_k_blocks(Q.Q6_K, h, i, rng), Q.Q6_K)]
    # Raw blocks are written as stored: already in llama.cpp's order, nothing to reorder.
    yield "llama_k_quants", "llama", wide, tensors, False


def golden_of(path):
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file="model.gguf",
                                                 torch_dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
        sequence = ids
        for _ in range(NEW_TOKENS):
            next_token = model(sequence).logits[0, -1].float().argmax()
            sequence = torch.cat([sequence, next_token.view(1, 1)], dim=1)
    return {"architecture": type(model).__name__, "dtype": "float32", "prompt": PROMPT,
            "logits": [[round(float(x), 7) for x in row] for row in logits],
            "greedy": [int(t) for t in sequence[0, len(PROMPT):]]}


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    summary = {"transformers": transformers.__version__, "torch": torch.__version__,
               "gguf": gguf.__version__ if hasattr(gguf, "__version__") else "?"}
    for name, arch, config, tensors, reorder in models(rng):
        path = os.path.join(HERE, name)
        os.makedirs(path, exist_ok=True)
        write_gguf(os.path.join(path, "model.gguf"), arch, config, tensors, reorder)
        golden = golden_of(path)
        with open(os.path.join(path, "golden.json"), "w") as f:
            json.dump(golden, f)
        summary[name] = {"architecture": golden["architecture"], "greedy": golden["greedy"]}
        print(name, golden["greedy"])
    with open(os.path.join(HERE, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
