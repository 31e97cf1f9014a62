#!/usr/bin/env python3
"""Makes the fine-tuning golden files: what PyTorch and Hugging Face transformers compute
for a training step of the tiny random checkpoints in tests/golden/models, so that
Tessera's trainer can be checked against them (the tests need no Python; the outputs are
committed).

For each model M in llama, llama_tied_linear, mistral, qwen2, glm, glm4 (llama_bf16 is
skipped), tests/golden/train/M/ gets:
  batches.json              {"padded": BATCH, "packed": BATCH}, each BATCH in the flat form
                            of Tessera's trainer: "tokens", "positions" (T ints each),
                            "sequence_starts" (S+1 ints, document boundaries, the last = T),
                            "targets" (T ints: the id that position t is trained to predict,
                            or -100), "loss" (float: mean cross entropy over the positions
                            whose target is not -100).
  grads_padded.safetensors  d loss / d parameter for every parameter, f32, full shape, named
  grads_packed.safetensors  as in model.safetensors (a tied model has no lm_head: its
                            embedding's gradient includes both uses).
For llama also:
  adamw.json, adamw_final.safetensors  ten steps of torch.optim.AdamW with a warmup+cosine
                            schedule and gradient clipping, alternating the two batches.
  lora_adapter/             a PEFT LoRA adapter (adapter_config.json, adapter_model.safetensors)
  lora_grads_padded.safetensors, lora.json  the padded batch's loss and the gradient of every
                            LoRA parameter, under the names of adapter_model.safetensors.
and tests/golden/train/summary.json: versions, per model the losses and gradient norms.

The batches (the same token ids for every model; ids drawn from [3, 256) by a seeded
torch.Generator):
  padded  two rows of 12: row 0 a full document, row 1 nine real tokens then three pads (id 0).
          Computed the ordinary Hugging Face way: input_ids (2, 12) and a 2D attention_mask
          with zeros on the pads (HF gives the pads positions 9..11; they influence nothing
          that is trained). Flat form: T = 24, sequence_starts [0, 12, 21, 24] (the padding is
          a document of its own, positions 0, 1, 2), targets -100 at the last token of each
          document, on every pad, and on targets[12..14] (row 1's "prompt").
  packed  one row of 24 tokens, documents of 10, 8 and 6 tokens, positions restarting at 0.
          Computed with input_ids (1, 24), position_ids (1, 24) and a 4D float attention
          mask (1, 1, 24, 24): 0 where query t may see key j (same document, j <= t and, for
          mistral, t - j < sliding_window), finfo(float32).min elsewhere. transformers 4.53
          passes a 4D mask through untouched (masking_utils._preprocess_mask_arguments), so
          the mask must carry the sliding window itself. The script asserts that the packed
          logits equal running each document alone (within 1e-5) and the padded logits equal
          running each row's real tokens alone, and that the gradients agree too.
The loss is computed here from the logits in float32 (log_softmax, gather, sum over the
trained positions / their count), not by HF's internal label shift; then loss.backward().

How it was run: CPU, float32, eager attention, one thread, deterministic algorithms, with
torch 2.5.1, transformers 4.53.3, peft 0.21.2 and safetensors 0.8.0 from PyPI in a venv:
    python3 -m venv VENV
    VENV/bin/pip install torch==2.5.1 transformers==4.53.3 peft==0.21.2 safetensors==0.8.0
    VENV/bin/python tests/golden/train/generate.py
(an optional argument names the output directory; the default is this file's directory, and
the models are always read from tests/golden/models next to it).
"""

import json
import math
import os
import shutil
import sys

import torch
import torch.nn.functional as F
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS_DIR = os.path.normpath(os.path.join(HERE, "..", "models"))
MODELS = ["llama", "llama_tied_linear", "mistral", "qwen2", "glm", "glm4"]
IGNORE = -100
VOCAB = 256
SEED = 2025          # token ids
LORA_SEED = 7        # LoRA A and B (init_lora_weights=False keeps nn.Linear's random init)
LOGIT_TOL = 1e-5

ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
WARMUP, TOTAL_STEPS, MAX_GRAD_NORM = 2, 10, 1.0
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            lora_dropout=0.0, bias="none", init_lora_weights=False)


# ----------------------------------------------------------------------------- batches

def document_targets(tokens, starts, trained):
    """targets[t] = tokens[t + 1] within each document, -100 at its last token; documents
    whose index is not in `trained` (padding) get -100 everywhere."""
    targets = [IGNORE] * len(tokens)
    for d in range(len(starts) - 1):
        if d not in trained:
            continue
        for t in range(starts[d], starts[d + 1] - 1):
            targets[t] = tokens[t + 1]
    return targets


def make_batches():
    g = torch.Generator().manual_seed(SEED)
    rows = torch.randint(3, VOCAB, (2, 12), generator=g)
    rows[1, 9:] = 0                                   # pads
    attention_mask = torch.ones(2, 12, dtype=torch.long)
    attention_mask[1, 9:] = 0
    tokens = [int(x) for x in rows.reshape(-1)]
    starts = [0, 12, 21, 24]
    targets = document_targets(tokens, starts, trained={0, 1})
    for t in (12, 13, 14):                            # row 1's prompt is not trained
        targets[t] = IGNORE
    padded = {"tokens": tokens,
              "positions": list(range(12)) + list(range(9)) + list(range(3)),
              "sequence_starts": starts, "targets": targets}
    padded_hf = {"input_ids": rows, "attention_mask": attention_mask}

    packed_ids = torch.randint(3, VOCAB, (24,), generator=g)
    tokens = [int(x) for x in packed_ids]
    starts = [0, 10, 18, 24]
    positions = [t - s for s, e in zip(starts, starts[1:]) for t in range(s, e)]
    packed = {"tokens": tokens, "positions": positions, "sequence_starts": starts,
              "targets": document_targets(tokens, starts, trained={0, 1, 2})}
    return padded, padded_hf, packed


def packed_mask(starts, window, rule="<"):
    """(1, 1, T, T) float mask: 0 where query t may attend key j, finfo.min elsewhere."""
    T = starts[-1]
    doc = torch.zeros(T, dtype=torch.long)
    for d, (s, e) in enumerate(zip(starts, starts[1:])):
        doc[s:e] = d
    t = torch.arange(T).view(T, 1)
    j = torch.arange(T).view(1, T)
    allowed = (doc.view(T, 1) == doc.view(1, T)) & (j <= t)
    if window is not None:
        allowed &= (t - j < window) if rule == "<" else (t - j <= window)
    mask = torch.zeros(T, T, dtype=torch.float32)
    mask[~allowed] = torch.finfo(torch.float32).min
    return mask.view(1, 1, T, T)


# ----------------------------------------------------------------------------- model runs

def load(name):
    path = os.path.join(MODELS_DIR, name)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32,
                                                 attn_implementation="eager")
    # from_pretrained must not have re-initialised anything (e.g. an embedding padding row).
    stored = load_file(os.path.join(path, "model.safetensors"))
    params = dict(model.named_parameters())
    assert set(stored) == set(params), (name, set(stored) ^ set(params))
    for n, w in stored.items():
        assert torch.equal(params[n].detach(), w), (name, n)
    model.train()  # every dropout of these configs is 0.0; train() is just the training path
    return model


def window_of(model):
    return getattr(model.config, "sliding_window", None) \
        if model.config.model_type == "mistral" else None


def logits_padded(model, hf):
    out = model(input_ids=hf["input_ids"], attention_mask=hf["attention_mask"], use_cache=False)
    return out.logits.reshape(-1, out.logits.shape[-1])


def logits_packed(model, batch, mask):
    ids = torch.tensor([batch["tokens"]])
    pos = torch.tensor([batch["positions"]])
    return model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).logits[0]


def logits_alone(model, tokens):
    ids = torch.tensor([tokens])
    pos = torch.arange(len(tokens)).view(1, -1)
    return model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]


def ce_sum(logits, targets):
    """Sum of cross entropies (float32) over positions with a target, and their count."""
    targets = torch.tensor(targets)
    keep = (targets != IGNORE).nonzero().view(-1)
    logp = logits.float().log_softmax(-1)
    nll = -logp[keep, targets[keep]]
    return nll.sum(), keep.numel()


def mean_ce(logits, targets):
    total, count = ce_sum(logits, targets)
    return total / count


def gradients(model, names):
    params = dict(model.named_parameters())
    out = {}
    for n in names:
        assert params[n].grad is not None, n
        out[n] = params[n].grad.detach().clone().contiguous()
    return out


def zero_grads(model):
    for p in model.parameters():
        p.grad = None


def max_diff(a, b):
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def max_abs(a):
    return max(float(v.abs().max()) for v in a.values())


def check_separately(model, batch, logits, docs, names, grads):
    """Runs each (start, end, logits_range) document alone; asserts its logits equal the
    batched ones, and that the loss and gradients of the documents run alone equal the
    batch's."""
    zero_grads(model)
    total, count, worst = 0.0, 0, 0.0
    for s, e, rows in docs:
        alone = logits_alone(model, batch["tokens"][s:e])
        worst = max(worst, float((alone - logits[rows].detach()).abs().max()))
        part, n = ce_sum(alone, batch["targets"][s:e])
        total, count = total + part, count + n
    assert worst < LOGIT_TOL, worst
    loss = total / count
    loss.backward()
    separate = gradients(model, names)
    zero_grads(model)
    gdiff = max_diff(grads, separate)
    assert gdiff <= 1e-5 * max(1.0, max_abs(grads)), gdiff
    return worst, gdiff, float(loss)


def norm(tensors):
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in tensors))


def run_model(name, out_dir, batches, padded_hf, notes):
    model = load(name)
    names = sorted(dict(model.named_parameters()))
    window = window_of(model)
    padded, packed = batches["padded"], batches["packed"]
    result = {"architecture": type(model).__name__, "losses": {}, "grad_norm": {},
              "param_grad_norms": {}, "checks": {}}

    # padded, the ordinary HF way
    zero_grads(model)
    logits = logits_padded(model, padded_hf)
    loss = mean_ce(logits, padded["targets"])
    loss.backward()
    grads = gradients(model, names)
    padded["loss"] = float(loss)
    save_file(grads, os.path.join(out_dir, "grads_padded.safetensors"))
    worst, gdiff, sep = check_separately(model, padded, logits,
                                         [(0, 12, slice(0, 12)), (12, 21, slice(12, 21))],
                                         names, grads)
    result["checks"]["padded_vs_rows_alone"] = {"max_logit_diff": worst, "max_grad_diff": gdiff}
    result["losses"]["padded"] = padded["loss"]
    result["grad_norm"]["padded"] = norm(grads.values())
    result["param_grad_norms"]["padded"] = {n: norm([g]) for n, g in grads.items()}

    # packed, with the 4D mask
    zero_grads(model)
    mask = packed_mask(packed["sequence_starts"], window)
    logits = logits_packed(model, packed, mask)
    loss = mean_ce(logits, packed["targets"])
    loss.backward()
    grads = gradients(model, names)
    packed["loss"] = float(loss)
    save_file(grads, os.path.join(out_dir, "grads_packed.safetensors"))
    st = packed["sequence_starts"]
    worst, gdiff, sep = check_separately(model, packed, logits,
                                         [(s, e, slice(s, e)) for s, e in zip(st, st[1:])],
                                         names, grads)
    result["checks"]["packed_vs_documents_alone"] = {"max_logit_diff": worst,
                                                     "max_grad_diff": gdiff}
    result["losses"]["packed"] = packed["loss"]
    result["grad_norm"]["packed"] = norm(grads.values())
    result["param_grad_norms"]["packed"] = {n: norm([g]) for n, g in grads.items()}

    with torch.no_grad():
        # Quirk probe: transformers 4.53 detects packing from position_ids alone when no
        # attention_mask is given, but only with torch >= 2.6. Recorded, not relied on.
        ids = torch.tensor([packed["tokens"]])
        pos = torch.tensor([packed["positions"]])
        auto = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
        result["checks"]["packed_from_position_ids_only_max_logit_diff"] = \
            float((auto - logits.detach()).abs().max())
        if window is not None:
            # Which window rule does transformers use? Compare the two candidate masks on
            # the packed batch against the documents run alone with HF's own mask.
            other = logits_packed(model, packed, packed_mask(st, window, rule="<="))
            d_le = float((other - logits.detach()).abs().max())
            assert d_le > 1e-3, d_le  # "<=" is measurably different; "<" matched above
            result["checks"]["sliding_window_rule"] = "t - j < sliding_window"
            result["checks"]["sliding_window_le_rule_max_logit_diff"] = d_le
            notes.append(f"{name}: sliding_window={window} means key j is visible from query "
                         f"t iff 0 <= t - j < {window} (the '<=' mask differs by {d_le:.3g})")

    with open(os.path.join(out_dir, "batches.json"), "w") as f:
        json.dump(batches, f, indent=1)
    return model, names, result


# ----------------------------------------------------------------------------- llama extras

def run_adamw(out_dir, batches, padded_hf):
    torch.manual_seed(0)
    model = load("llama")
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    opt = torch.optim.AdamW(params, **ADAMW)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=WARMUP,
                                            num_training_steps=TOTAL_STEPS)
    mask = packed_mask(batches["packed"]["sequence_starts"], None)
    steps = []
    for s in range(TOTAL_STEPS):
        kind = "padded" if s % 2 == 0 else "packed"
        batch = batches[kind]
        opt.zero_grad(set_to_none=True)
        logits = logits_padded(model, padded_hf) if kind == "padded" \
            else logits_packed(model, batch, mask)
        loss = mean_ce(logits, batch["targets"])
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        steps.append({"step": s, "batch": kind, "lr": lr, "loss": float(loss),
                      "grad_norm": float(grad_norm)})
    with torch.no_grad():
        after = {"padded": float(mean_ce(logits_padded(model, padded_hf),
                                         batches["padded"]["targets"])),
                 "packed": float(mean_ce(logits_packed(model, batches["packed"], mask),
                                         batches["packed"]["targets"]))}
    final = {n: p.detach().clone().contiguous() for n, p in zip(names, params)}
    save_file(final, os.path.join(out_dir, "adamw_final.safetensors"))
    doc = {
        "hyperparameters": {
            "optimizer": "torch.optim.AdamW", "lr": ADAMW["lr"], "betas": list(ADAMW["betas"]),
            "eps": ADAMW["eps"], "weight_decay": ADAMW["weight_decay"], "amsgrad": False,
            "weight_decay_applies_to": "every parameter (one param group), decoupled: "
                                       "p -= lr * weight_decay * p before the Adam update",
            "schedule": "transformers.get_cosine_schedule_with_warmup",
            "num_warmup_steps": WARMUP, "num_training_steps": TOTAL_STEPS,
            "schedule_formula": "lr(s) = lr * s / warmup for s < warmup, else lr * 0.5 * "
                                "(1 + cos(pi * (s - warmup) / (total - warmup))); "
                                "scheduler.step() after each optimizer step",
            "max_grad_norm": MAX_GRAD_NORM,
            "clipping": "torch.nn.utils.clip_grad_norm_: total L2 norm over all gradients; "
                        "if it exceeds max_grad_norm every gradient is multiplied by "
                        "max_grad_norm / (total_norm + 1e-6)",
            "batches": "step s uses 'padded' when s is even, 'packed' when odd "
                       "(batches.json)",
        },
        "steps": steps,
        "loss_after": after,
    }
    with open(os.path.join(out_dir, "adamw.json"), "w") as f:
        json.dump(doc, f, indent=1)
    return doc


def run_lora(out_dir, batches, padded_hf, base_loss):
    import peft
    from peft import LoraConfig, get_peft_model
    model = load("llama")
    torch.manual_seed(LORA_SEED)
    config = LoraConfig(task_type="CAUSAL_LM", **LORA)
    pm = get_peft_model(model, config)
    pm.peft_config["default"].base_model_name_or_path = "tests/golden/models/llama"
    adapter_dir = os.path.join(out_dir, "lora_adapter")
    if os.path.isdir(adapter_dir):
        shutil.rmtree(adapter_dir)
    pm.save_pretrained(adapter_dir)
    readme = os.path.join(adapter_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    # peft keeps target_modules as a set, so its order in the json follows the string hash
    # seed of the run; sort it so that reruns write the same file.
    config_path = os.path.join(adapter_dir, "adapter_config.json")
    with open(config_path) as f:
        adapter_config = json.load(f)
    adapter_config["target_modules"] = sorted(adapter_config["target_modules"])
    with open(config_path, "w") as f:
        json.dump(adapter_config, f, indent=2, sort_keys=True)
    with open(config_path) as f:
        text = f.read()
    assert "/work" not in text and HERE not in text and "\"/" not in text, text
    assert sorted(os.listdir(adapter_dir)) == ["adapter_config.json",
                                               "adapter_model.safetensors"], \
        os.listdir(adapter_dir)

    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    trainable = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    by_saved_name = {n.replace(".default.", "."): p for n, p in trainable.items()}
    assert set(by_saved_name) == set(saved), set(by_saved_name) ^ set(saved)
    for n, w in saved.items():
        assert torch.equal(by_saved_name[n].detach(), w), n
    # init_lora_weights=False: peft 0.21 skips reset_lora_parameters' init entirely, so A
    # and B both keep nn.Linear's default kaiming_uniform_(a=sqrt(5)), U(-1/sqrt(in), 1/sqrt(in)).
    a_max = max(float(w.abs().max()) for n, w in saved.items() if "lora_A" in n)
    b_max = max(float(w.abs().max()) for n, w in saved.items() if "lora_B" in n)
    b_min = min(float(w.abs().max()) for n, w in saved.items() if "lora_B" in n)
    assert b_min > 0 and a_max <= 1 / math.sqrt(64) and b_max <= 1 / math.sqrt(LORA["r"])

    pm.train()
    logits = pm(input_ids=padded_hf["input_ids"], attention_mask=padded_hf["attention_mask"],
                use_cache=False).logits.reshape(-1, VOCAB)
    loss = mean_ce(logits, batches["padded"]["targets"])
    loss.backward()
    grads = {n: by_saved_name[n].grad.detach().clone().contiguous() for n in sorted(saved)}
    save_file(grads, os.path.join(out_dir, "lora_grads_padded.safetensors"))
    doc = {
        "batch": "padded",
        "loss": float(loss),
        "base_model_loss": base_loss,
        "r": LORA["r"], "lora_alpha": LORA["lora_alpha"],
        "scaling": LORA["lora_alpha"] / LORA["r"],
        "target_modules": LORA["target_modules"], "lora_dropout": LORA["lora_dropout"],
        "bias": LORA["bias"], "init_lora_weights": LORA["init_lora_weights"],
        "init_note": f"peft {peft.__version__} with init_lora_weights=False skips its LoRA "
                     "init: lora_A and lora_B keep nn.Linear's default kaiming_uniform_"
                     "(a=sqrt(5)) init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (A: 1/8, B: 1/2), "
                     f"drawn after torch.manual_seed({LORA_SEED}); so B is nonzero. The values "
                     "are in lora_adapter/adapter_model.safetensors.",
        "forward": "y = W x + scaling * B (A x)",
        "grad_norm": norm(grads.values()),
        "param_grad_norms": {n: norm([g]) for n, g in grads.items()},
    }
    with open(os.path.join(out_dir, "lora.json"), "w") as f:
        json.dump(doc, f, indent=1)
    return doc


# ----------------------------------------------------------------------------- main

def main(out_root):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    import peft
    import safetensors
    summary = {"torch": torch.__version__, "transformers": transformers.__version__,
               "peft": peft.__version__, "safetensors": safetensors.__version__,
               "dtype": "float32", "attn_implementation": "eager", "device": "cpu",
               "models": {}, "notes": []}
    notes = summary["notes"]
    for name in MODELS:
        padded, padded_hf, packed = make_batches()
        batches = {"padded": padded, "packed": packed}
        out_dir = os.path.join(out_root, name)
        os.makedirs(out_dir, exist_ok=True)
        _, _, result = run_model(name, out_dir, batches, padded_hf, notes)
        if name == "llama":
            adamw = run_adamw(out_dir, batches, padded_hf)
            result["adamw"] = {"losses": [s["loss"] for s in adamw["steps"]],
                               "grad_norms": [s["grad_norm"] for s in adamw["steps"]],
                               "lrs": [s["lr"] for s in adamw["steps"]],
                               "loss_after": adamw["loss_after"]}
            lora = run_lora(out_dir, batches, padded_hf, padded["loss"])
            result["lora"] = {"loss_padded": lora["loss"], "grad_norm": lora["grad_norm"]}
        summary["models"][name] = result
    notes.append("4D attention masks are passed through untouched by transformers 4.53 "
                 "(masking_utils._preprocess_mask_arguments returns early for any 4D tensor): "
                 "the caller's mask must include causality and any sliding window.")
    notes.append("With position_ids and no attention_mask, transformers 4.53 detects packed "
                 "documents from position restarts (find_packed_sequence_indices) only with "
                 "torch >= 2.6; with torch 2.5.1 that is silently skipped and the documents "
                 "attend across each other (checks.packed_from_position_ids_only_max_logit_diff "
                 "is large). Hence the explicit 4D mask.")
    notes.append("glm and glm4 have pad_token_id 0, so their nn.Embedding has padding_idx=0 and "
                 "HF never gives embedding row 0 a gradient; token 0 appears here only as "
                 "padding, whose gradient is zero anyway.")
    with open(os.path.join(out_root, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)

    print(f"{'model':<20}{'padded':>12}{'packed':>12}{'|g| padded':>12}{'|g| packed':>12}")
    for name, r in summary["models"].items():
        print(f"{name:<20}{r['losses']['padded']:>12.6f}{r['losses']['packed']:>12.6f}"
              f"{r['grad_norm']['padded']:>12.6f}{r['grad_norm']['packed']:>12.6f}")
    r = summary["models"]["llama"]
    print("llama adamw losses", [round(x, 6) for x in r["adamw"]["losses"]])
    print("llama adamw lrs", r["adamw"]["lrs"])
    print("llama lora padded loss", r["lora"]["loss_padded"])
    for n in notes:
        print("note:", n)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else HERE)
