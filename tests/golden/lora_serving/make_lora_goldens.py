#!/usr/bin/env python3
"""Makes random LoRA adapters for the tiny checkpoints of tests/golden/models (three for llama,
one for glm4) with the `peft` package itself, saves them with peft's save_pretrained, and
records what transformers + peft compute with each: the f32 logits of every position of a
fixed prompt.
Tessera's serving test (tests/mpi/lora_serving_test.cc) loads the same directories, one rank's
slices each, and compares its logits against these at every tensor-parallel degree.

The adapters differ in what a loader must get right:
  a  r 4, lora_alpha 8, q_proj and v_proj (column-parallel only)
  b  r 8, lora_alpha 16, all seven projections, with rank_pattern (down_proj r 2, layer 1's
     o_proj r 6) and alpha_pattern (gate_proj alpha 4)
  c  r 6, lora_alpha 12, use_rslora (scale alpha / sqrt(r)), k_proj, o_proj, up_proj and
     down_proj (both row-parallel projections)
  glm4  r 4, lora_alpha 8 on glm4, q_proj, o_proj, the fused gate_up_proj (each rank holds
     its gate rows and its up rows of B) and down_proj
Their factors are drawn at random (peft starts B at zero, which would add nothing).

How it was run (outputs are committed; the tests need no Python), from the repository root,
with torch 2.x, transformers 4.53.3 and peft 0.21.2 from PyPI in a venv:
  VENV/bin/python tests/golden/lora_serving/make_lora_goldens.py
Eager attention, f32, CPU.
"""

import json
import os
import shutil

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model

MODELS = "tests/golden/models"
OUT = "tests/golden/lora_serving"
PROMPT = [1, 17, 200, 35, 99, 4, 250, 63, 128, 7, 42, 3]

# name -> (base model in MODELS, peft LoraConfig options)
ADAPTERS = {
    "a": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    "b": ("llama", dict(r=8, lora_alpha=16,
              target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                              "down_proj"],
              rank_pattern={"down_proj": 2, "model.layers.1.self_attn.o_proj": 6},
              alpha_pattern={"gate_proj": 4})),
    "c": ("llama", dict(r=6, lora_alpha=12, use_rslora=True,
                        target_modules=["k_proj", "o_proj", "up_proj", "down_proj"])),
    "glm4": ("glm4", dict(r=4, lora_alpha=8,
                          target_modules=["q_proj", "o_proj", "gate_up_proj", "down_proj"])),
}


def load(base):
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.join(MODELS, base), torch_dtype=torch.float32, attn_implementation="eager")


def logits_of(model):
    with torch.no_grad():
        return model(torch.tensor([PROMPT])).logits[0].float()


def main():
    torch.manual_seed(0)
    summary = {"prompt": PROMPT, "peft": peft.__version__,
               "transformers": transformers.__version__, "adapters": {}}
    for seed, (name, (base_name, options)) in enumerate(ADAPTERS.items(), start=1):
        base_logits = logits_of(load(base_name))
        model = get_peft_model(load(base_name), LoraConfig(lora_dropout=0.0, bias="none",
                                                task_type="CAUSAL_LM", **options))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if "lora_A" in param_name:  # (r, in): x A^T of unit scale
                    param.copy_(torch.randn(param.shape, generator=generator)
                                / param.shape[1] ** 0.5)
                elif "lora_B" in param_name:  # (out, r)
                    param.copy_(0.05 * torch.randn(param.shape, generator=generator))
        model.eval()
        logits = logits_of(model)
        path = os.path.join(OUT, name)
        shutil.rmtree(path, ignore_errors=True)
        model.save_pretrained(path)
        readme = os.path.join(path, "README.md")  # peft's model card: not needed
        if os.path.exists(readme):
            os.remove(readme)
        golden = {"adapter": name, "base": base_name, "dtype": "float32",
                  "logits": [[round(float(x), 7) for x in row] for row in logits]}
        with open(os.path.join(path, "golden.json"), "w") as f:
            json.dump(golden, f)
        change = float((logits - base_logits).abs().max() / base_logits.abs().max())
        summary["adapters"][name] = {"base": base_name, **options, "max_change_from_base": round(change, 4)}
        print(name, "largest change from the base, relative to its largest logit:", change)
    with open(os.path.join(OUT, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
