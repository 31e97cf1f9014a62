#!/usr/bin/env python3
"""Records greedy decoding with OpenAI's presence and frequency penalties on the committed
golden checkpoints (made by generate.py), computed with torch on the logits that transformers
gives: Tessera's penalty tests (tests/mpi/model_golden_check.h) compare against these files at
every tensor-parallel degree.

OpenAI's definition (https://platform.openai.com/docs/advanced-usage, "frequency and presence
penalties"), over the tokens generated so far (not the prompt):
  logits[j] -= frequency_penalty * count[j] + presence_penalty * (count[j] > 0)
computed in f32 as vLLM does (the frequency term, then the presence term). transformers'
repetition_penalty is a different (multiplicative, prompt-including) rule, so it is not used.
Each step also records the 5 most likely tokens of log_softmax of the raw logits (before the
penalties), as Tessera reports top log-probabilities.

How it was run (outputs are committed; the tests need no Python):
  VENV/bin/python tests/golden/models/penalties.py tests/golden/models
with torch 2.5.1 and transformers 4.53.3 from PyPI, CPU, f32. It leaves out a case whose penalized choice
is within 1e-3 of the runner-up at some step, so that float rounding cannot flip a token.
"""

import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM

MODELS = ["llama", "qwen2", "mistral"]
NEW_TOKENS = 16
TOP = 5
# (presence_penalty, frequency_penalty): both positive; a negative presence penalty that
# favours repeating, until the frequency penalty grows past it; frequency alone.
CASES = [(0.6, 0.4), (-1.0, 0.3), (0.0, 0.9), (0.3, 0.0)]


def penalize(logits, generated, presence, frequency):
    """OpenAI's penalties on a (V) f32 row for the generated token ids."""
    counts = torch.zeros_like(logits)
    for t in generated:
        counts[t] += 1.0
    logits = logits - torch.tensor(frequency, dtype=torch.float32) * counts
    logits = logits - torch.tensor(presence, dtype=torch.float32) * (counts > 0).float()
    return logits


def main(out_dir):
    for name in MODELS:
        path = os.path.join(out_dir, name)
        with open(os.path.join(path, "golden.json")) as f:
            prompt = json.load(f)["prompt"]
        model = AutoModelForCausalLM.from_pretrained(
            path, torch_dtype=torch.float32, attn_implementation="eager").eval()
        cases = []
        for presence, frequency in CASES:
            near_tie = False
            sequence = torch.tensor([prompt])
            generated, tops = [], []
            with torch.no_grad():
                for _ in range(NEW_TOKENS):
                    raw = model(sequence).logits[0, -1].float()
                    logprobs = torch.log_softmax(raw.double(), dim=-1)
                    values, ids = torch.topk(logprobs, TOP)
                    tops.append([[int(i), round(float(v), 7)] for i, v in zip(ids, values)])
                    penalized = penalize(raw, generated, presence, frequency)
                    best = torch.topk(penalized, 2).values
                    if float(best[0] - best[1]) < 1e-3:
                        near_tie = True
                        break
                    token = int(penalized.argmax())
                    generated.append(token)
                    sequence = torch.cat([sequence, torch.tensor([[token]])], dim=1)
            if near_tie:
                print(name, presence, frequency, "left out: a near tie at step", len(generated))
                continue
            cases.append({"presence_penalty": presence, "frequency_penalty": frequency,
                          "tokens": generated, "top_logprobs": tops})
            print(name, presence, frequency, generated)
        with open(os.path.join(path, "penalties.json"), "w") as f:
            json.dump({"prompt": prompt, "top": TOP, "cases": cases}, f)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
