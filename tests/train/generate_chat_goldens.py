#!/usr/bin/env python3
"""Writes chat_examples.golden.json: {"messages"} training examples as transformers makes them,
for tests/train/data_test.cc (ChatExamplesGoldenTest) to check runtime/train/data.h against.

For each chat template (tests/golden/chat/templates) with a test tokenizer that has its special
tokens (tests/golden/tokenizer), and each conversation below:
  input_ids  tokenizer.apply_chat_template(messages, tokenize=True): the whole conversation.
  labels     the loss mask by the rule data.h states, computed with transformers: the text that
             assistant message i adds is apply_chat_template(messages[:i+1]) minus
             apply_chat_template(messages[:i], add_generation_prompt=True); those tokens keep
             their id, all others are -100. (return_assistant_tokens_mask needs templates with
             {% generation %}, which these do not have.)
  segmented_input_ids
             only where it differs from input_ids: the ids of the segments (the text between
             the boundaries above) encoded one by one with add_special_tokens=False and joined,
             which is what data.h trains on. They would differ where BPE merges across a
             boundary (a vocabulary with a "\n\n" token and a reply that starts with a
             newline after the header's); with these test vocabularies none does, and the
             generator prints which cases are equal.

Run, in a virtual environment with transformers from PyPI: VENV/bin/python tests/train/generate_chat_goldens.py
(made with transformers 4.53.3, tokenizers 0.21.4, jinja2 3.1.6).
"""

import json
import pathlib

from transformers import PreTrainedTokenizerFast

HERE = pathlib.Path(__file__).resolve().parent
GOLDEN = HERE.parent / "golden"

# template, tokenizer, and the special token strings of the published tokenizer_config.json.
MODELS = {
    "smollm2": ("smollm2_135m_instruct.jinja", "smollm2.tokenizer.json",
                {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}),
    "qwen2": ("qwen2_instruct.jinja", "qwen2.tokenizer.json",
              {"bos_token": None, "eos_token": "<|im_end|>"}),
}

CONVERSATIONS = {
    "multi_turn": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome, since 1871."},
    ],
    "default_system_prompt": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
    ],
    "trailing_user_turn": [
        {"role": "user", "content": "Count to three."},
        {"role": "assistant", "content": "1, 2, 3"},
        {"role": "user", "content": "Thanks!"},
    ],
    "unicode_and_newlines": [
        {"role": "system", "content": "Réponds en français.\n\nSois bref."},
        {"role": "user", "content": "Ünïcödé 你好 🌍 — \"quotes\"\ttab"},
        {"role": "assistant", "content": "Ça va? «oui» 日本語\n\n- item\n- item 2\n"},
    ],
    "leading_spaces_and_empty_reply": [
        {"role": "user", "content": "Say nothing."},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Now indent."},
        {"role": "assistant", "content": "   indented  "},
    ],
    "reply_starting_with_newlines": [
        {"role": "user", "content": "Start on a new line."},
        {"role": "assistant", "content": "\n\nLike this."},
    ],
}


def example(tok, messages):
    whole = tok.apply_chat_template(messages, tokenize=True)
    full_text = tok.apply_chat_template(messages, tokenize=False)
    # (start, end, trained) character ranges of the whole rendering.
    segments = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tok.apply_chat_template(messages[: i + 1], tokenize=False)
        assert full_text.startswith(before) and full_text.startswith(through), "not incremental"
        assert cursor <= len(before) <= len(through)
        segments.append((cursor, len(before), False))
        segments.append((len(before), len(through), True))
        cursor = len(through)
    segments.append((cursor, len(full_text), False))
    ids, labels = [], []
    for start, end, trained in segments:
        if start == end:
            continue
        part = tok.encode(full_text[start:end], add_special_tokens=False)
        ids += part
        labels += part if trained else [-100] * len(part)
    case = {"messages": messages, "input_ids": whole, "labels": labels}
    if ids != whole:
        case["segmented_input_ids"] = ids
    assert len(ids) == len(labels)
    return case


def main():
    models = []
    for name, (template_file, tokenizer_file, tokens) in MODELS.items():
        template = (GOLDEN / "chat" / "templates" / template_file).read_text(encoding="utf-8")
        tok = PreTrainedTokenizerFast(tokenizer_file=str(GOLDEN / "tokenizer" / tokenizer_file),
                                      **{k: v for k, v in tokens.items() if v is not None})
        tok.chat_template = template
        cases = []
        for conversation, messages in CONVERSATIONS.items():
            case = {"name": conversation, **example(tok, messages)}
            cases.append(case)
            print(f"{name}/{conversation}: {len(case['input_ids'])} ids, "
                  f"{sum(l != -100 for l in case['labels'])} trained, segments "
                  f"{'differ from' if 'segmented_input_ids' in case else 'equal'} the whole")
        models.append({"name": name, "template": template_file, "tokenizer": tokenizer_file,
                       **tokens, "cases": cases})
    out = HERE / "chat_examples.golden.json"
    out.write_text(json.dumps({"models": models}, ensure_ascii=False, indent=1) + "\n",
                   encoding="utf-8")
    print(out.name)


if __name__ == "__main__":
    main()
