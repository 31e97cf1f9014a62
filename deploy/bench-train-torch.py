#!/usr/bin/env python3
"""PyTorch eager's fine-tuning throughput on a Hugging Face model directory, for
`tessera bench train --torch PYTHON`: the same model, batch and sequence length, random
tokens with every token trained, f32 weights and compute, AdamW, all cores. Prints one line
per timed step on stderr and tokens/s alone on the last line of stdout.

Needs torch 2.x and transformers (and peft for --lora-r) from PyPI, e.g.
  python3 -m venv VENV && VENV/bin/pip install torch transformers peft
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
    parser.add_argument("--lora-r", type=int, default=0,
                        help="LoRA (peft) of this rank on q, k, v, o; alpha 2r; 0: full")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32,
                                                 attn_implementation="sdpa")
    if args.lora_r > 0:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(
            r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    vocab = model.config.vocab_size
    warmup = 2
    ids = torch.randint(0, vocab, (args.steps + warmup, args.batch, args.seq_len))
    times = []
    for step in range(args.steps + warmup):
        start = time.perf_counter()
        loss = model(input_ids=ids[step], labels=ids[step]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
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
