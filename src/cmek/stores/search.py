"""In-memory search over one tenant's metadata (titles, descriptions, column names).

The index only ever leaves memory as ``to_bytes()``, which the caller seals under the
tenant's key; so this module stays pure (no disk, keys or network) and ``from_bytes()``
treats its input as untrusted: anything malformed is ``InvalidInput``, nothing else.

Tokens and query terms come from ``search_tokens``. All query terms must match; the last
one also matches as a prefix, for search-as-you-type.
"""

from __future__ import annotations

import heapq
import json
import threading
from bisect import bisect_left
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from cmek.errors import InvalidInput
from cmek.stores.search_tokens import query_terms, tokenize

FORMAT_VERSION = 1
MAX_QUERY_CHARS = 512
MAX_LIMIT = 200
MAX_DOC_ID_CHARS = 256
MAX_KIND_CHARS = 64
MAX_TITLE_CHARS = 1024
MAX_TEXTS = 10_000
MAX_DOC_CHARS = 262_144  # title plus texts: room for a wide table's column names

# A title match always outranks a body match, even a title prefix against an exact body word.
TITLE_WEIGHT = 3.0
TEXT_WEIGHT = 1.0
PREFIX_FACTOR = 0.5

_TITLE = 1
_TEXT = 2
_TOP = "\U0010ffff"  # a noncharacter, never inside a token: bounds a prefix range


@dataclass(frozen=True, slots=True)
class Hit:
    doc_id: str
    kind: str
    title: str
    score: float
    matched: tuple[str, ...]  # the normalised query terms (all of them: queries are AND)


@dataclass(frozen=True, slots=True)
class _Doc:
    kind: str
    title: str
    texts: tuple[str, ...]
    # Sorted, so a candidate's prefix match is a bisect rather than a scan of its tokens.
    title_tokens: tuple[str, ...]
    text_tokens: tuple[str, ...]


def _check_str(name: str, value: object, max_chars: int, *, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string")
    if not value and not allow_empty:
        raise InvalidInput(f"{name} must not be empty")
    if len(value) > max_chars:
        raise InvalidInput(f"{name} longer than {max_chars} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{name} is not valid Unicode text") from None
    return value


class SearchIndex:
    """Posting lists per token plus a sorted vocabulary for prefix lookups; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._docs: dict[str, _Doc] = {}
        # token -> {doc_id: _TITLE | _TEXT bits}
        self._postings: dict[str, dict[str, int]] = {}
        # token -> docs with it in their title: a lone short prefix ("r") ranks title hits
        # first and can often stop there, without touching the far longer body postings.
        self._title_postings: dict[str, set[str]] = {}
        # Sorted vocabulary, merged lazily: appending new tokens and re-sorting lets timsort
        # merge two runs in linear time, where insort per token would be quadratic on a build.
        # Tokens whose postings emptied stay listed (skipped on lookup) until a compaction.
        self._vocab: list[str] = []
        self._pending: list[str] = []
        self._listed: set[str] = set()

    # -- mutation -------------------------------------------------------------------------

    def upsert(self, doc_id: str, kind: str, title: str, texts: Iterable[str] = ()) -> None:
        """Add ``doc_id``, replacing any earlier version of it."""
        doc = self._make_doc(doc_id, kind, title, texts)
        with self._lock:
            self._put(doc_id, doc)

    def remove(self, doc_id: str) -> bool:
        with self._lock:
            doc = self._docs.pop(doc_id, None)
            if doc is None:
                return False
            self._unpost(doc_id, doc)
            return True

    @staticmethod
    def _make_doc(doc_id: str, kind: str, title: str, texts: Iterable[str]) -> _Doc:
        _check_str("doc_id", doc_id, MAX_DOC_ID_CHARS, allow_empty=False)
        _check_str("kind", kind, MAX_KIND_CHARS, allow_empty=False)
        _check_str("title", title, MAX_TITLE_CHARS, allow_empty=True)
        if isinstance(texts, str | bytes):
            raise InvalidInput("texts must be an iterable of strings, not a single string")
        try:
            items = tuple(texts)
        except TypeError:
            raise InvalidInput("texts must be an iterable of strings") from None
        if len(items) > MAX_TEXTS:
            raise InvalidInput(f"more than {MAX_TEXTS} texts in one document")
        total = len(title)
        for text in items:
            _check_str("text", text, MAX_DOC_CHARS, allow_empty=True)
            total += len(text)
        if total > MAX_DOC_CHARS:
            raise InvalidInput(f"document longer than {MAX_DOC_CHARS} characters")
        text_tokens: set[str] = set()
        for text in items:
            text_tokens |= tokenize(text)
        return _Doc(kind, title, items, tuple(sorted(tokenize(title))), tuple(sorted(text_tokens)))

    def _put(self, doc_id: str, doc: _Doc) -> None:
        old = self._docs.get(doc_id)
        if old is not None:
            self._unpost(doc_id, old)
        self._docs[doc_id] = doc
        bits: dict[str, int] = dict.fromkeys(doc.title_tokens, _TITLE)
        for token in doc.text_tokens:
            bits[token] = bits.get(token, 0) | _TEXT
        for token, b in bits.items():
            posting = self._postings.get(token)
            if posting is None:
                posting = self._postings[token] = {}
                if token not in self._listed:
                    self._listed.add(token)
                    self._pending.append(token)
            posting[doc_id] = b
        for token in doc.title_tokens:
            self._title_postings.setdefault(token, set()).add(doc_id)

    def _unpost(self, doc_id: str, doc: _Doc) -> None:
        for token in {*doc.title_tokens, *doc.text_tokens}:
            posting = self._postings[token]
            del posting[doc_id]
            if not posting:
                del self._postings[token]
        for token in doc.title_tokens:
            titled = self._title_postings[token]
            titled.discard(doc_id)
            if not titled:
                del self._title_postings[token]

    # -- queries --------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return len(self._docs)

    def doc_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._docs)

    def search(
        self, query: str, *, limit: int = 20, kinds: Collection[str] | None = None
    ) -> list[Hit]:
        """Documents containing every query term (the last one possibly as a prefix), best first.

        Ranking: per term, title beats body and exact beats prefix; ties go by title
        (casefolded, then as written), then id.
        """
        if not isinstance(query, str):
            raise InvalidInput("query must be a string")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidInput(f"query longer than {MAX_QUERY_CHARS} characters")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIMIT}")
        kind_set: frozenset[str] | None = None
        if kinds is not None:
            if isinstance(kinds, str):
                raise InvalidInput("kinds must be a collection of kinds, not a single string")
            try:
                kind_set = frozenset(kinds)
            except TypeError:
                raise InvalidInput("kinds must be a collection of strings") from None
        terms = query_terms(query)
        if not terms:
            return []
        with self._lock:
            scores = self._score(terms, kind_set, limit)
            matched = tuple(terms)
            docs = self._docs

            def rank(item: tuple[str, float]) -> tuple[float, str, str, str]:
                title = docs[item[0]].title
                return (-item[1], title.casefold(), title, item[0])

            best = heapq.nsmallest(limit, scores.items(), key=rank)
            return [
                Hit(doc_id, docs[doc_id].kind, docs[doc_id].title, score, matched)
                for doc_id, score in best
            ]

    def _score(
        self, terms: list[str], kinds: frozenset[str] | None, limit: int
    ) -> dict[str, float]:
        """Scores of the matching documents; may leave out some that cannot make the top."""
        *exact, prefix = terms  # query_terms() dropped repeats, so prefix is not in exact
        postings: list[dict[str, int]] = []
        for term in exact:
            posting = self._postings.get(term)
            if posting is None:
                return {}
            postings.append(posting)
        postings.sort(key=len)

        cands: set[str] | None = None
        if postings:
            cands = {d for d in postings[0] if all(d in p for p in postings[1:])}
            if kinds is not None:
                cands = {d for d in cands if self._docs[d].kind in kinds}
            if not cands:
                return {}
        if cands is None:
            return self._lone_prefix_scores(prefix, kinds, limit)
        prefix_scores = self._prefix_scores(prefix, cands)
        return {
            d: s + sum(TITLE_WEIGHT if p[d] & _TITLE else TEXT_WEIGHT for p in postings)
            for d, s in prefix_scores.items()
        }

    def _prefix_range(self, prefix: str) -> list[str]:
        """Vocabulary tokens starting with ``prefix`` (some possibly no longer in use)."""
        self._refresh_vocab()
        lo = bisect_left(self._vocab, prefix)
        hi = bisect_left(self._vocab, prefix + _TOP, lo)
        return self._vocab[lo:hi]

    def _lone_prefix_scores(
        self, prefix: str, kinds: frozenset[str] | None, limit: int
    ) -> dict[str, float]:
        tokens = self._prefix_range(prefix)
        docs = self._docs
        # Title matches score at least TITLE_WEIGHT * PREFIX_FACTOR, above any body match:
        # when there are ``limit`` of them, body matches cannot reach the top.
        out: dict[str, float] = {}
        for token in tokens:
            for d in self._title_postings.get(token, ()):
                if kinds is None or docs[d].kind in kinds:
                    s = TITLE_WEIGHT if token == prefix else TITLE_WEIGHT * PREFIX_FACTOR
                    if s > out.get(d, 0.0):
                        out[d] = s
        if len(out) >= limit:
            return out
        for token in tokens:
            posting = self._postings.get(token)
            if posting is None:
                continue
            s = TEXT_WEIGHT if token == prefix else TEXT_WEIGHT * PREFIX_FACTOR
            for d, b in posting.items():
                if b == _TEXT and s > out.get(d, 0.0) and (kinds is None or docs[d].kind in kinds):
                    out[d] = s
        return out

    def _prefix_scores(self, prefix: str, cands: set[str]) -> dict[str, float]:
        """Best score of the last term for each candidate that matches it."""
        tokens = self._prefix_range(prefix)
        out: dict[str, float] = {}
        if len(cands) <= len(tokens):
            # Few candidates, wide prefix: look at each candidate's own tokens instead.
            for d in cands:
                s = _token_score(prefix, self._docs[d])
                if s:
                    out[d] = s
            return out
        for token in tokens:
            posting = self._postings.get(token)
            if posting is None:
                continue
            factor = 1.0 if token == prefix else PREFIX_FACTOR
            for d, b in posting.items():
                if d not in cands:
                    continue
                s = factor * (TITLE_WEIGHT if b & _TITLE else TEXT_WEIGHT)
                if s > out.get(d, 0.0):
                    out[d] = s
        return out

    def _refresh_vocab(self) -> None:
        if len(self._listed) > 2 * len(self._postings) + 1024:
            self._vocab = sorted(self._postings)
            self._listed = set(self._vocab)
            self._pending.clear()
        elif self._pending:
            self._vocab.extend(self._pending)
            self._vocab.sort()
            self._pending.clear()

    # -- persistence ----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted ids and keys, no spaces, UTF-8): same content, same bytes."""
        with self._lock:
            docs = [
                {"id": d, "kind": doc.kind, "title": doc.title, "texts": list(doc.texts)}
                for d, doc in sorted(self._docs.items())
            ]
        body = {"v": FORMAT_VERSION, "docs": docs}
        return json.dumps(
            body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> SearchIndex:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInput("search index must be bytes")
        try:
            body = json.loads(
                bytes(data).decode("utf-8"),
                object_pairs_hook=_no_duplicate_keys,
                parse_constant=_reject_constant,
            )
        except InvalidInput:
            raise
        except (ValueError, RecursionError):
            raise InvalidInput("search index is not valid JSON") from None
        if not isinstance(body, dict) or set(body) != {"v", "docs"}:
            raise InvalidInput("search index has an unknown layout")
        version = body["v"]
        if type(version) is not int or version != FORMAT_VERSION:
            raise InvalidInput("search index has an unsupported version")
        entries = body["docs"]
        if not isinstance(entries, list):
            raise InvalidInput("search index has an unknown layout")
        index = cls()
        for entry in entries:
            if not isinstance(entry, dict) or set(entry) != {"id", "kind", "title", "texts"}:
                raise InvalidInput("search index has a malformed document")
            texts = entry["texts"]
            if not isinstance(texts, list):
                raise InvalidInput("search index has a malformed document")
            doc_id = entry["id"]
            doc = cls._make_doc(doc_id, entry["kind"], entry["title"], texts)
            if doc_id in index._docs:
                raise InvalidInput("search index repeats a document id")
            index._put(doc_id, doc)
        return index


def _token_score(prefix: str, doc: _Doc) -> float:
    for tokens, weight in ((doc.title_tokens, TITLE_WEIGHT), (doc.text_tokens, TEXT_WEIGHT)):
        i = bisect_left(tokens, prefix)
        if i < len(tokens) and tokens[i].startswith(prefix):
            return weight if tokens[i] == prefix else weight * PREFIX_FACTOR
    return 0.0


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise InvalidInput("search index repeats a key")
    return out


def _reject_constant(name: str) -> Any:
    raise InvalidInput("search index is not valid JSON")
