#!/usr/bin/env python3
"""Makes tiny Hugging Face GPTQ checkpoints with GPTQModel (the GPTQ algorithm itself, run on
the CPU over random calibration tokens) and records what the reference computes from them:

  <name>/config.json, model.safetensors, generation_config.json
      the checkpoint exactly as GPTQModel saves it (qweight, qzeros, scales, g_idx of every
      projection; embeddings and norms in f16; quantization_config in config.json).
  <name>/golden.json
      "logits" of every position of a fixed prompt and a "greedy" continuation, from
      transformers' LlamaForCausalLM in f32 over the weights GPTQModel dequantizes (its own
      unpacking of qweight/qzeros, with its v1 -> v2 zero-point conversion, in f32), in the
      format of tests/golden/models/*/golden.json; and "dequantized": for every quantized
      projection the FNV-1a 64 digest of the dequantized [out, in] weight as little-endian f32
      (exact: an f16 scale times a small integer) and as f16 (GPTQModel's own f16
      dequantization), with its first 8 values, so tests can check Tessera's bit for bit.
  summary.json
      versions, and how far GPTQModel's own quantized forward (TorchLinear, f16) lies from the
      f32 logits: the check that the dequantized model is the model GPTQModel runs.

How it is run (outputs are committed; the tests need no Python): GPTQModel 7.7.0 needs
transformers 5, so it lives in its own venv, which reuses torch from a venv that has it:
    python3 -m venv VENV_TORCH && VENV_TORCH/bin/pip install torch numpy safetensors
    python3 -m venv VENV && echo VENV_TORCH/lib/python3.11/site-packages \
        > VENV/lib/python3.11/site-packages/zz_torch.pth
    VENV/bin/pip install gptqmodel==7.7.0
    GPTQMODEL_CPU_WORKERS=2 VENV/bin/python tests/golden/gptq/make_gptq_golden.py
"""

import json
import os
import shutil
import tempfile

import torch
import transformers
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import gptqmodel
from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
from gptqmodel.nn_modules.qlinear import PackableQuantLinear

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = 128
PROMPT = [1, 17, 100, 35, 99, 4, 120, 63, 127, 7, 42, 3]
NEW_TOKENS = 8
PROJECTIONS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]

# One layer, hidden 64, MLP 256: the MLP's down projection has 256 inputs, so that group size
# 128 makes two groups (and a TP-4 split of its inputs cuts one); TP 1, 2 and 4 divide the
# heads and the MLP, and 4 ranks replicate the 2 KV heads.
CONFIG = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=1,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              max_position_embeddings=128, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
              tie_word_embeddings=True, rope_theta=10000.0, initializer_range=0.05)

# name: (group_size, desc_act, sym, checkpoint format)
VARIANTS = {
    "llama_g32_act_order_sym": (32, True, True, "gptq"),
    "llama_g128_asym": (128, False, False, "gptq"),
    "llama_g64_act_order_asym_v2": (64, True, False, "gptq_v2"),
    "llama_g32_asym_v2": (32, False, False, "gptq_v2"),
}


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def f32_value(value):
    """A float32 as the shortest decimal that reads back as the same float32."""
    return float(f"{float(value):.9g}")


def make_float_model(directory):
    """A random f16 Llama whose quantization exercises every zero point: in the asymmetric
    variants some rows hold only positive weights (zero point 0, which the v1 format stores
    as -1 with a borrow into the next field) or only negative ones (zero point 15)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()
    with torch.no_grad():
        gate = model.model.layers[0].mlp.gate_proj.weight
        gate[0:3].abs_()
        gate[5:7] = -gate[5:7].abs()
        down = model.model.layers[0].mlp.down_proj.weight
        down[8:9].abs_()
    model.to(torch.float16).save_pretrained(directory)
    vocab = {f"t{i}": i for i in range(VOCAB)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="t1", eos_token="t2",
                            pad_token="t0", unk_token="t0").save_pretrained(directory)


def calibration():
    generator = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(3, VOCAB, (1, 32), generator=generator),
             "attention_mask": torch.ones(1, 32, dtype=torch.long)} for _ in range(24)]


def dequantize(module):
    """The reference's dequantization of one TorchLinear, [out, in]: in f16 as it computes
    it, and in f32 (its own code, run with the scales widened to f32: exact)."""
    f16 = module.dequantize_weight().T.contiguous()
    scales = module.scales
    module.scales = scales.float()
    try:
        f32 = PackableQuantLinear.dequantize_weight(module).T.contiguous()
    finally:
        module.scales = scales
    assert f16.dtype == torch.float16 and f32.dtype == torch.float32
    assert torch.equal(f32.half(), f16), "f16 dequantization is not f32's rounded"
    return f32, f16


def logits_and_greedy(model):
    tokens = list(PROMPT)
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].float()
        prefill = logits.clone()
        for _ in range(NEW_TOKENS):
            tokens.append(int(model(torch.tensor([tokens])).logits[0, -1].argmax()))
    return prefill, tokens[len(PROMPT):]


def main():
    summary = {"gptqmodel": gptqmodel.__version__, "transformers": transformers.__version__,
               "torch": torch.__version__}
    work = tempfile.mkdtemp(prefix="gptq_golden_")
    float_dir = os.path.join(work, "float")
    make_float_model(float_dir)
    for name, (group_size, desc_act, sym, fmt) in VARIANTS.items():
        quantized_dir = os.path.join(work, name)
        config = QuantizeConfig(bits=4, group_size=group_size, desc_act=desc_act, sym=sym,
                                format=fmt)
        model = GPTQModel.load(float_dir, config, device="cpu", dtype=torch.float16)
        model.quantize(calibration())
        model.save(quantized_dir)
        del model

        out_dir = os.path.join(HERE, name)
        os.makedirs(out_dir, exist_ok=True)
        for file in ("generation_config.json", "model.safetensors"):
            shutil.copy(os.path.join(quantized_dir, file), os.path.join(out_dir, file))
        with open(os.path.join(quantized_dir, "config.json")) as f:
            written = json.load(f)
        assert written["quantization_config"]["checkpoint_format"] == fmt, written
        # GPTQModel records the temporary folder it offloaded to; it means nothing elsewhere.
        written["quantization_config"]["meta"]["offload_to_disk_path"] = None
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(written, f, indent=2)

        # The reference's own runtime: GPTQModel's torch kernel, on the CPU.
        quantized = GPTQModel.load(quantized_dir, backend=BACKEND.GPTQ_TORCH, device="cpu",
                                   dtype=torch.float16)
        dequantized, digests = {}, {}
        for module_name, module in quantized.model.named_modules():
            if isinstance(module, PackableQuantLinear):
                f32, f16 = dequantize(module)
                weight = module_name + ".weight"
                dequantized[weight] = f32
                digests[weight] = {
                    "shape": list(f32.shape),
                    "f32_fnv1a64": fnv1a64(f32.numpy().astype("<f4").tobytes()),
                    "f16_fnv1a64": fnv1a64(f16.numpy().astype("<f2").tobytes()),
                    "head": [f32_value(v) for v in f32[0, :8]],
                }
        assert len(dequantized) == len(PROJECTIONS) * CONFIG["num_hidden_layers"], dequantized
        with torch.no_grad():
            reference_logits = quantized.model(torch.tensor([PROMPT])).logits[0].float()
        del quantized

        # The same model in f32: the checkpoint's float tensors widened, the projections as
        # dequantized above.
        stored = load_file(os.path.join(out_dir, "model.safetensors"))
        state = {k: v.float() for k, v in stored.items()
                 if not k.endswith((".qweight", ".qzeros", ".scales", ".g_idx"))}
        state.update(dequantized)
        f32_model = LlamaForCausalLM(LlamaConfig(**CONFIG, attn_implementation="eager")).eval()
        missing, unexpected = f32_model.load_state_dict(state, strict=False)
        assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing,
                                                                                 unexpected)
        f32_model.tie_weights()
        logits, greedy = logits_and_greedy(f32_model)
        kernel_error = float((reference_logits - logits).abs().max() / logits.abs().max())
        assert kernel_error < 2e-2, kernel_error

        golden = {
            "architecture": "LlamaForCausalLM",
            "dtype": "float32",
            "prompt": PROMPT,
            "logits": [[f32_value(v) for v in row] for row in logits],
            "greedy": greedy,
            "gptq": {"group_size": group_size, "desc_act": desc_act, "sym": sym,
                     "checkpoint_format": fmt},
            "dequantized": digests,
        }
        with open(os.path.join(out_dir, "golden.json"), "w") as f:
            json.dump(golden, f, separators=(",", ":"))
        summary[name] = {"greedy": greedy,
                         "gptqmodel_f16_kernel_max_relative_logit_error": kernel_error}
        print(name, greedy, f"kernel error {kernel_error:.2e}")
    with open(os.path.join(HERE, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
