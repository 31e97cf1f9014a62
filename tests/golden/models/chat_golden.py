#!/usr/bin/env python3
"""Adds a chat golden to the qwen2_chat model directory that generate.py made: the Qwen2
chat template (tests/golden/chat/templates) as its tokenizer_config.json's chat_template,
and what transformers does with a conversation: apply_chat_template(add_generation_prompt=
True, tokenize=True), then greedy decoding (one full forward pass per token, argmax of the
last position), decoded by transformers' tokenizer. Writes qwen2_chat/tokenizer_config.json
and qwen2_chat/golden_chat.json; the weights are read, not changed.

How it was run (outputs are committed; the tests need no Python): torch 2.x and
transformers 4.53.3 from PyPI in a venv:
  VENV/bin/python tests/golden/models/chat_golden.py tests/golden/models
"""

import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = os.path.join(HERE, "..", "chat", "templates", "qwen2_instruct.jinja")
MESSAGES = [{"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": "What is the capital of France?"}]
NEW_TOKENS = 12


def main(out_dir):
    path = os.path.join(out_dir, "qwen2_chat")
    with open(TEMPLATE) as f:
        template = f.read()
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "chat_template": template, "model_max_length": 128,
              "tokenizer_class": "Qwen2TokenizerFast"}
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
        f.write("\n")
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(path, "tokenizer.json"),
                                  eos_token="<|im_end|>", chat_template=template)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    rendered = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    prompt = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    sequence = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            next_token = model(sequence).logits[0, -1].argmax()
            sequence = torch.cat([sequence, next_token.view(1, 1)], dim=1)
    generated = [int(t) for t in sequence[0, len(prompt):]]
    golden = {"transformers": transformers.__version__, "messages": MESSAGES,
              "rendered": rendered, "prompt": prompt, "greedy": generated,
              "text": tok.decode(generated, skip_special_tokens=True)}
    with open(os.path.join(path, "golden_chat.json"), "w") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(len(prompt), generated, repr(golden["text"]))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else HERE)
