"""Write CLIP tokenizer files (vocab.json, merges.txt) for a small closed vocabulary.

Our own SDXL-format models (the tiny random test pipelines and the ShapesWorld models)
need a tokenizer whose files we write ourselves: nothing may be downloaded. We build a
byte-level BPE exactly in CLIP's format: every byte symbol (alone and word-final) is in
the vocabulary, so any text tokenizes (unknown words fall apart into pieces, never a
crash), and each known word gets a chain of merges that joins it into one token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from bytes to printable unicode symbols."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def build_bpe(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary (token -> id) and ranked merges that make each word of `words` one token.

    Ids: the 256 byte symbols, their word-final forms, merged tokens, then BOS and EOS last
    (so that no special token has id 2, which CLIP treats as a legacy marker).
    """
    encoder = bytes_to_unicode()
    byte_symbols = list(encoder.values())
    vocab: list[str] = byte_symbols + [s + "</w>" for s in byte_symbols]
    known = set(vocab)
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted({w.lower() for w in words if w.strip()}):
        symbols = [encoder[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        # Merges of earlier words may already split this one: join whatever pieces the
        # current merges leave, left to right. New merges rank last, so they never change
        # how an earlier word is merged (BPE always takes the lowest-ranked pair first).
        pieces = apply_bpe(symbols, ranks)
        left = pieces[0]
        for right in pieces[1:]:
            ranks.setdefault((left, right), len(ranks))
            left = left + right
            if left not in known:
                known.add(left)
                vocab.append(left)
    merges = sorted(ranks, key=ranks.get)
    vocab += [BOS, EOS]
    return {token: i for i, token in enumerate(vocab)}, merges


def apply_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word: repeatedly join every occurrence of the lowest-ranked pair."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:]) if (a, b) in ranks}
        if not pairs:
            break
        best = min(pairs, key=ranks.get)
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def write_clip_tokenizer(folder: str | Path, words: Iterable[str], max_length: int = 77) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs of a CLIPTokenizer into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_bpe(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return folder
