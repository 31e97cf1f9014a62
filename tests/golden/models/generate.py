#!/usr/bin/env python3
"""Makes tiny random-weight checkpoints of each supported architecture with Hugging Face
transformers, and records what transformers computes for them: the logits of every
position of a fixed prompt and a greedy continuation. Tessera's golden tests compare its
own forward pass against these files at every tensor-parallel degree.

How it was run (outputs are committed; the tests need no Python):
  Debian 12's python3-torch (torch 1.13) and transformers 4.46.3 from PyPI in a venv with
  system site packages:
    python3 -m venv --system-site-packages VENV && VENV/bin/pip install transformers==4.46.3
    VENV/bin/python tests/golden/models/generate.py tests/golden/models
  glm4 (Glm4ForCausalLM) needs a newer transformers; it was made alone, with torch 2.5.1 and
  transformers 4.53.3 from PyPI in a plain venv:
    VENV/bin/python tests/golden/models/generate.py tests/golden/models --only glm4
  which writes only that directory and its entry in summary.json.
Eager attention, f32 (and one bf16 checkpoint), CPU. qwen2_chat and glm_chat are complete
model directories with the tokenizer.json of tests/golden/tokenizer and the greedy text
that transformers' tokenizer decodes, for `tessera generate` end to end. Greedy continuations are computed
with one full forward pass per token and argmax over the last position's logits.
"""

import json
import os
import sys

import torch
import transformers
from transformers import (GenerationConfig, GlmConfig, GlmForCausalLM, LlamaConfig,
                          LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

# Small enough to commit, shaped so that tensor parallelism at 1, 2 and 4 divides the heads,
# the MLP and the vocabulary, and so that 4 ranks must replicate the 2 KV heads.
COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, attn_implementation="eager")

PROMPT = [1, 17, 200, 35, 99, 4, 250, 63, 128, 7, 42, 3]
NEW_TOKENS = 12


def models():
    yield "llama", LlamaForCausalLM, LlamaConfig(
        **COMMON, rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=16)), torch.float32
    yield "llama_tied_linear", LlamaForCausalLM, LlamaConfig(
        **COMMON, rope_theta=10000.0, tie_word_embeddings=True,
        rope_scaling=dict(rope_type="linear", factor=2.0)), torch.float32
    yield "llama_bf16", LlamaForCausalLM, LlamaConfig(
        **COMMON, rope_theta=10000.0, tie_word_embeddings=False), torch.bfloat16
    yield "mistral", MistralForCausalLM, MistralConfig(
        **COMMON, rope_theta=10000.0, sliding_window=5, tie_word_embeddings=False), torch.float32
    yield "qwen2", Qwen2ForCausalLM, Qwen2Config(
        **COMMON, rope_theta=1000000.0, tie_word_embeddings=False,
        use_sliding_window=False), torch.float32
    glm = dict(COMMON)
    glm["head_dim"] = 16
    yield "glm", GlmForCausalLM, GlmConfig(
        **glm, partial_rotary_factor=0.5, attention_bias=True, rope_theta=10000.0,
        tie_word_embeddings=False, pad_token_id=0), torch.float32
    if hasattr(transformers, "Glm4ForCausalLM"):
        # GLM-4-0414: GLM's attention and fused gate_up plus a norm after each sub-layer.
        yield "glm4", transformers.Glm4ForCausalLM, transformers.Glm4Config(
            **glm, partial_rotary_factor=0.5, attention_bias=True, rope_theta=10000.0,
            tie_word_embeddings=False, pad_token_id=0), torch.float32


TOKENIZERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tokenizer")
TEXT_PROMPT = "The capital of France is"


def tokenized_models():
    """Complete model directories with a tokenizer.json, as published checkpoints come: the
    vocabulary is the tokenizer's (1785 and 1777 tokens, which 4 ranks do not divide)."""
    for name, cls, config_cls, extra, tokenizer in [
            ("qwen2_chat", Qwen2ForCausalLM, Qwen2Config,
             dict(rope_theta=1000000.0, use_sliding_window=False), "qwen2"),
            ("glm_chat", GlmForCausalLM, GlmConfig,
             dict(head_dim=16, partial_rotary_factor=0.5, attention_bias=True,
                  rope_theta=10000.0, pad_token_id=0), "glm4")]:
        path = os.path.join(TOKENIZERS, tokenizer + ".tokenizer.json")
        tok = PreTrainedTokenizerFast(tokenizer_file=path)
        common = dict(COMMON)
        common["vocab_size"] = len(tok)
        yield name, cls, config_cls(**common, **extra, tie_word_embeddings=False), tok, path


def make_tokenized(out_dir, summary):
    for name, cls, config, tok, tokenizer_path in tokenized_models():
        model = cls(config).eval()
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.normal_(1.0, 0.1) if "norm" in n else p.normal_(0.0, 0.08)
        path = os.path.join(out_dir, name)
        model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2,
                                                   do_sample=False)
        model.save_pretrained(path, safe_serialization=True)
        with open(tokenizer_path) as f, open(os.path.join(path, "tokenizer.json"), "w") as g:
            g.write(f.read())
        prompt = tok.encode(TEXT_PROMPT)
        sequence = torch.tensor([prompt])
        with torch.no_grad():
            for _ in range(NEW_TOKENS):
                next_token = model(sequence).logits[0, -1].argmax()
                sequence = torch.cat([sequence, next_token.view(1, 1)], dim=1)
        generated = [int(t) for t in sequence[0, len(prompt):]]
        golden = {"architecture": type(model).__name__, "dtype": "float32",
                  "prompt_text": TEXT_PROMPT, "prompt": prompt, "greedy": generated,
                  "text": tok.decode(generated, skip_special_tokens=True)}
        with open(os.path.join(path, "golden_text.json"), "w") as f:
            json.dump(golden, f, ensure_ascii=False)
        summary[name] = {"architecture": golden["architecture"], "greedy": generated,
                         "text": golden["text"]}
        print(name, generated, repr(golden["text"]))


def main(out_dir, only=None):
    torch.manual_seed(0)
    summary = {"transformers": transformers.__version__, "torch": torch.__version__}
    if only:
        with open(os.path.join(out_dir, "summary.json")) as f:
            summary = json.load(f)
    for name, cls, config, dtype in models():
        if name == "glm4":
            torch.manual_seed(4)  # its own seed: made alone, by a newer transformers
        if only and name not in only:
            continue
        model = cls(config).eval()
        # Random weights well away from zero-mean-only init, so that every term matters.
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.08)
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.normal_(1.0, 0.1)
        model = model.to(dtype)
        path = os.path.join(out_dir, name)
        model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2,
                                                   do_sample=False)
        model.save_pretrained(path, safe_serialization=True)
        ids = torch.tensor([PROMPT])
        with torch.no_grad():
            logits = model(ids).logits[0].float()
            # Greedy decoding, one full forward per token (what generate(do_sample=False)
            # computes; generate itself fails to import with torch 1.13 on Python 3.11).
            sequence = ids
            for _ in range(NEW_TOKENS):
                next_token = model(sequence).logits[0, -1].float().argmax()
                sequence = torch.cat([sequence, next_token.view(1, 1)], dim=1)
            generated = sequence[0, len(PROMPT):]
        golden = {
            "architecture": config.architectures[0] if config.architectures else cls.__name__,
            "dtype": str(dtype).replace("torch.", ""),
            "prompt": PROMPT,
            "logits": [[round(float(x), 7) for x in row] for row in logits],
            "greedy": [int(t) for t in generated],
        }
        with open(os.path.join(path, "golden.json"), "w") as f:
            json.dump(golden, f)
        summary[name] = {"architecture": golden["architecture"], "dtype": golden["dtype"],
                         "greedy": golden["greedy"]}
        if only:
            summary[name]["made_with"] = {"transformers": transformers.__version__,
                                          "torch": torch.__version__}
        print(name, golden["greedy"])
    if not only:
        make_tokenized(out_dir, summary)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    args = sys.argv[1:]
    chosen = None
    if "--only" in args:
        at = args.index("--only")
        chosen = set(args[at + 1].split(","))
        del args[at:at + 2]
    main(args[0] if args else os.path.dirname(os.path.abspath(__file__)), chosen)
