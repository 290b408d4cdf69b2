"""How words become search tokens; the index applies these rules to documents and queries.

Tokens are NFKC-normalised and casefolded words (letters, digits and marks, so accented
and Indic words stay whole). An identifier such as ``customer_id`` or ``orderTotal`` is
indexed whole (``customer_id``, ``ordertotal``) and by its parts (``customer``, ``id``,
``order``, ``total``). Query words are taken whole: ``customer_id`` finds exactly that
identifier, ``customer id`` finds every document with both parts.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator

_ASCII_WORD = re.compile(r"[A-Za-z0-9_]+")


def _fold(s: str) -> str:
    # Casefolding can leave non-NFKC output (e.g. some Greek), hence the second pass.
    return unicodedata.normalize("NFKC", s.casefold())


def _raw_words(text: str) -> Iterator[str]:
    """Maximal runs of letters, digits, marks and underscores, ends trimmed of ``_``."""
    if text.isascii():  # already NFKC; the common case for metadata, so kept fast
        words: Iterable[str] = _ASCII_WORD.findall(text)
    else:
        words = _unicode_words(unicodedata.normalize("NFKC", text))
    for word in words:
        word = word.strip("_")
        if word:
            yield word


def _unicode_words(text: str) -> Iterator[str]:
    # re's \w excludes combining marks, which would cut words in Devanagari, Thai, ...
    start = -1
    for i, ch in enumerate(text):
        if ch == "_" or unicodedata.category(ch)[0] in "LNM":
            if start < 0:
                start = i
        elif start >= 0:
            yield text[start:i]
            start = -1
    if start >= 0:
        yield text[start:]


def _camel_parts(chunk: str) -> list[str]:
    """``orderTotal`` -> order, Total; ``HTTPServer`` -> HTTP, Server; ``Q4Sales`` -> Q4, Sales."""
    rest = chunk[1:]
    if rest.lower() == rest or chunk.upper() == chunk:  # no split point possible
        return [chunk]
    parts: list[str] = []
    start = 0
    for i in range(1, len(chunk)):
        ch = chunk[i]
        if not ch.isupper():
            continue
        prev = chunk[i - 1]
        if not prev.isupper() or (i + 1 < len(chunk) and chunk[i + 1].islower()):
            parts.append(chunk[start:i])
            start = i
    parts.append(chunk[start:])
    return parts


def tokenize(text: str) -> set[str]:
    """Index tokens of ``text``: every word whole, plus the parts of compound identifiers."""
    fold = str.lower if text.isascii() else _fold
    tokens: set[str] = set()
    for word in _raw_words(text):
        tokens.add(fold(word))
        if "_" in word:
            parts = [p for chunk in word.split("_") if chunk for p in _camel_parts(chunk)]
        else:
            parts = _camel_parts(word)
        if len(parts) > 1:
            tokens.update(map(fold, parts))
    return tokens


def query_terms(query: str) -> list[str]:
    """Normalised query words, in order, without repeats; words are not split into parts."""
    seen: dict[str, None] = {}
    for word in _raw_words(query):
        seen.setdefault(_fold(word), None)
    return list(seen)
