#!/usr/bin/env python3
"""PyTorch eager's fine-tuning throughput on a Hugging Face model directory, for
`tessera bench train --torch PYTHON`: the same model, batch and sequence length, random
tokens with every token trained, f32 weights and compute, AdamW, all cores. Prints one line
per timed step on stderr and tokens/s alone on the last line of stdout.

Needs torch 2.x and transformers (from PyPI), e.g.
  python3 -m venv VENV && VENV/bin/pip install torch transformers
"""

import argparse
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32,
                                                 attn_implementation="sdpa")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    vocab = model.config.vocab_size
    warmup = 2
    ids = torch.randint(0, vocab, (args.steps + warmup, args.batch, args.seq_len))
    times = []
    for step in range(args.steps + warmup):
        start = time.perf_counter()
        loss = model(input_ids=ids[step], labels=ids[step]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        print(f"pytorch step {step}{' (warm-up)' if step < warmup else ''}: "
              f"loss {loss.item():.4f}, {elapsed:.3f} s", file=sys.stderr)
        if step >= warmup:
            times.append(elapsed)
    median = sorted(times)[len(times) // 2]
    print(f"{args.batch * args.seq_len / median:.3f}")


if __name__ == "__main__":
    main()
