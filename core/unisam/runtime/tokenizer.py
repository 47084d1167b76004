"""CLIP's byte-level BPE tokenizer on plain Python, so that text encoding needs no torch.

Behaves as open_clip's default ``SimpleTokenizer`` (clean = "lower", no reduction): text is repaired
with ftfy, HTML-unescaped twice, whitespace collapsed and lower-cased, split by CLIP's pattern, each
piece's UTF-8 bytes mapped to printable characters and merged by the ranked merges of the model's
BPE file (``bpe_simple_vocab_16e6.txt.gz``, exported beside the ONNX graphs). Rows are
``<start_of_text> tokens <end_of_text>`` zero-padded to ``context_length``; longer texts are cut and
end with ``<end_of_text>``.
"""

from __future__ import annotations

import gzip
import html
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import numpy as np
import regex

MERGES = 49152 - 256 - 2  # merge rules that CLIP's vocabulary uses (the file holds a few more)
SPECIAL = ("<start_of_text>", "<end_of_text>")
_PATTERN = regex.compile(
    "|".join(SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
)


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """Each byte value -> one printable character: printable Latin-1 bytes stand for themselves, the
    other 68 byte values take the code points 256, 257, ... in byte order (GPT-2/CLIP's mapping)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + i) for i, b in enumerate(others)})
    return table


def clean(text: str) -> str:
    """open_clip's "lower" cleaning: ftfy repair, HTML entities decoded twice, whitespace runs -> one
    space, stripped, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


class ClipTokenizer:
    """Text -> ``(N, context_length)`` int64 token ids, as open_clip tokenizes for CLIP models."""

    def __init__(self, merges_file: str | Path, context_length: int = 77) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (start and end tokens), got {context_length}")
        try:
            lines = gzip.open(merges_file, "rt", encoding="utf-8").read().split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise ValueError(f"{merges_file} is not a gzipped CLIP BPE merges file: {exc}") from None
        merges = [tuple(line.split()) for line in lines[1 : MERGES + 1]]
        if len(merges) != MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{merges_file} does not hold CLIP's {MERGES} BPE merge rules")
        letters = list(byte_alphabet().values())
        vocab = letters + [c + "</w>" for c in letters] + ["".join(m) for m in merges] + list(SPECIAL)
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.context_length = context_length
        self.start, self.end = self.encoder[SPECIAL[0]], self.encoder[SPECIAL[1]]
        self._words: dict[str, list[int]] = {s: [self.encoder[s]] for s in SPECIAL}

    def _bpe(self, piece: str) -> list[int]:
        """Token ids of one pre-split piece (already mapped to the byte alphabet), memoised."""
        if piece in self._words:
            return self._words[piece]
        symbols = [*piece[:-1], piece[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, MERGES))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids = [self.encoder[s] for s in symbols]
        self._words[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens."""
        alphabet = byte_alphabet()
        ids: list[int] = []
        for piece in _PATTERN.findall(clean(text)):
            ids.extend(self._bpe("".join(alphabet[b] for b in piece.encode("utf-8"))))
        return ids

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """``(N, context_length)`` int64: start, tokens, end, zeros; cut to fit with the end token kept."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in zip(out, texts):
            ids = [self.start, *self.encode(text), self.end][: self.context_length]
            ids[-1] = self.end
            row[: len(ids)] = ids
        return out
