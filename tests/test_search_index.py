"""The tenant search index: matching, ranking, its sealed-at-rest byte form, and an oracle."""

from __future__ import annotations

import contextlib
import json
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmek.errors import InvalidInput
from cmek.stores.search import Hit, SearchIndex


def ids(hits: list[Hit]) -> list[str]:
    return [h.doc_id for h in hits]


@pytest.fixture
def index() -> SearchIndex:
    ix = SearchIndex()
    ix.upsert("t1", "table", "Orders", ["All customer orders", "customer_id", "orderTotal"])
    ix.upsert("t2", "table", "Customers", ["One row per customer", "customer_id", "email"])
    ix.upsert("m1", "model", "Revenue model", ["Monthly revenue by region"])
    ix.upsert("l1", "liveboard", "Sales overview", ["revenue", "pipeline"])
    ix.upsert("a1", "answer", "Top regions", ["Which region sells most"])
    return ix


# -- basics ---------------------------------------------------------------------------------


def test_upsert_search_remove(index: SearchIndex) -> None:
    assert len(index) == 5
    assert index.doc_ids() == ["a1", "l1", "m1", "t1", "t2"]
    hits = index.search("orders")
    assert ids(hits) == ["t1"]
    assert hits[0] == Hit("t1", "table", "Orders", hits[0].score, ("orders",))
    assert index.remove("t1") is True
    assert index.search("orders") == []
    assert index.remove("t1") is False
    assert len(index) == 4
    assert "t1" not in index.doc_ids()
    assert ids(index.search("customer")) == ["t2"]


def test_upsert_replaces_the_earlier_version(index: SearchIndex) -> None:
    index.upsert("t1", "model", "Shipments", ["carrier"])
    assert len(index) == 5
    assert index.search("orders") == []
    assert index.search("ordertotal") == []
    [hit] = index.search("carrier")
    assert (hit.doc_id, hit.kind, hit.title) == ("t1", "model", "Shipments")
    # customer_id is still indexed, but only for t2 now
    assert ids(index.search("customer_id")) == ["t2"]


def test_all_terms_must_match(index: SearchIndex) -> None:
    assert ids(index.search("customer email")) == ["t2"]
    assert ids(index.search("customer orders")) == ["t1"]
    assert index.search("customer pipeline") == []
    assert index.search("nonexistent customer") == []
    assert index.search("customer customer") == index.search("customer")  # repeats count once
    [hit] = index.search("email customer")
    assert hit.matched == ("email", "customer")


def test_only_the_last_term_matches_as_a_prefix(index: SearchIndex) -> None:
    assert ids(index.search("reve")) == ["m1", "l1"]
    assert ids(index.search("monthly reve")) == ["m1"]
    assert index.search("reve monthly") == []  # "reve" is not last, so it must be exact
    assert ids(index.search("custom")) == ["t2", "t1"]
    assert index.search("customers x") == []
    assert index.search("revenuex") == []  # a prefix does not match a shorter word
    [hit] = index.search("monthly reve")
    assert hit.matched == ("monthly", "reve")


def test_identifiers_are_indexed_whole_and_by_parts(index: SearchIndex) -> None:
    for query in ("customer_id", "Customer_ID", "customer id", "id", "customer_i"):
        assert ids(index.search(query)) == ["t2", "t1"], query
    for query in ("ordertotal", "orderTotal", "order total", "total", "ordert"):
        assert ids(index.search(query)) == ["t1"], query
    assert index.search("order_total") == []  # a query identifier must match whole
    assert index.search("customerid") == []

    ix = SearchIndex()
    ix.upsert("x", "table", "HTTPServerLog", ["__private_field__", "Q4Sales", "v2_api-keys"])
    for query in ("http", "server", "log", "httpserverlog", "private", "private_field",
                  "field", "q4", "sales", "q4sales", "v2", "api", "keys"):
        assert ids(ix.search(query)) == ["x"], query
    assert ids(ix.search("q")) == ["x"]
    assert ix.search("_private_field_")[0].matched == ("private_field",)


def test_tokens_are_unicode_aware() -> None:
    ix = SearchIndex()
    ix.upsert("de", "table", "Straße Übersicht", ["größe"])
    ix.upsert("hi", "table", "हिन्दी रिपोर्ट", [])
    ix.upsert("fw", "table", "ＲＥＶＥＮＵＥ", [])  # fullwidth letters (NFKC)
    ix.upsert("ac", "table", "cafe\u0301 menu", [])  # combining accent
    assert ids(ix.search("STRASSE")) == ["de"]
    assert ids(ix.search("übersicht")) == ["de"]
    assert ids(ix.search("GRÖSSE")) == ["de"]
    assert ids(ix.search("हिन्दी")) == ["hi"]
    assert ids(ix.search("रिपो")) == ["hi"]
    assert ids(ix.search("revenue")) == ["fw"]
    assert ids(ix.search("café")) == ["ac"]
    assert ix.search("cafe") == []  # accents are significant, only the encoding is normalised


def test_kinds_filter(index: SearchIndex) -> None:
    assert ids(index.search("revenue", kinds={"model"})) == ["m1"]
    assert ids(index.search("revenue", kinds=["liveboard", "answer"])) == ["l1"]
    assert ids(index.search("customer id", kinds=("table",))) == ["t2", "t1"]
    assert index.search("customer id", kinds=("model",)) == []
    assert index.search("revenue", kinds=[]) == []
    with pytest.raises(InvalidInput):
        index.search("revenue", kinds="model")


def test_title_matches_rank_above_other_texts() -> None:
    ix = SearchIndex()
    ix.upsert("body", "table", "Alpha", ["revenue"])
    ix.upsert("title", "table", "Zeta revenue", [])
    ix.upsert("prefix-in-title", "table", "Yak revenues", [])
    assert ids(ix.search("revenue")) == ["title", "prefix-in-title", "body"]
    scores = [h.score for h in ix.search("revenue")]
    assert scores[0] > scores[1] > scores[2] > 0
    # a second term in the title adds up
    ix.upsert("both", "table", "Revenue region", ["x"])
    ix.upsert("one", "table", "Revenue", ["region"])
    assert ids(ix.search("revenue region")) == ["both", "one"]


def test_ties_are_broken_by_title_then_doc_id() -> None:
    ix = SearchIndex()
    ix.upsert("3", "table", "beta", ["sales"])
    ix.upsert("2", "table", "Alpha", ["sales"])
    ix.upsert("1", "table", "beta", ["sales"])
    ix.upsert("0", "table", "Gamma", ["sales"])  # titles compare casefolded first
    assert ids(ix.search("sales")) == ["2", "1", "3", "0"]
    assert ids(ix.search("sales", limit=2)) == ["2", "1"]


def test_limit_and_query_bounds(index: SearchIndex) -> None:
    for i in range(250):
        index.upsert(f"bulk{i:03}", "table", f"bulk {i}", [])
    assert len(index.search("bulk")) == 20
    assert len(index.search("bulk", limit=1)) == 1
    assert len(index.search("bulk", limit=200)) == 200
    for bad in (0, -1, 201, True, 2.0):
        with pytest.raises(InvalidInput):
            index.search("bulk", limit=bad)  # type: ignore[arg-type]
    for empty in ("", "   ", "\t\n", "--- !!", "_"):
        assert index.search(empty) == []
    assert index.search("x" * 512) == []
    with pytest.raises(InvalidInput):
        index.search("x" * 513)
    with pytest.raises(InvalidInput):
        index.search(b"bulk")  # type: ignore[arg-type]


def test_upsert_rejects_bad_documents() -> None:
    ix = SearchIndex()
    with pytest.raises(InvalidInput):
        ix.upsert("d", "table", "t", "a single string")
    with pytest.raises(InvalidInput):
        ix.upsert("", "table", "t")
    with pytest.raises(InvalidInput):
        ix.upsert("d", "", "t")
    with pytest.raises(InvalidInput):
        ix.upsert("d", "table", "t", [1])  # type: ignore[list-item]
    with pytest.raises(InvalidInput):
        ix.upsert("d", "table", "bad \ud800 surrogate")
    with pytest.raises(InvalidInput):
        ix.upsert("d" * 257, "table", "t")
    with pytest.raises(InvalidInput):
        ix.upsert("d", "table", "t", ["x" * 200_000, "y" * 100_000])
    assert len(ix) == 0
    ix.upsert("d", "table", "", (t for t in ["generated", "texts"]))
    assert ids(ix.search("generated texts")) == ["d"]


def test_churn_keeps_prefix_lookups_exact() -> None:
    """Tokens of removed documents linger in the sorted vocabulary until compaction."""
    ix = SearchIndex()
    for round_ in range(4):
        for i in range(800):
            ix.upsert(f"d{i}", "table", f"w{round_}x{i}", [f"common{round_}"])
        assert len(ix.search(f"w{round_}x", limit=200)) == 200
        assert ix.search(f"w{round_ - 1}x") == []
        assert ids(ix.search(f"w{round_}x799")) == ["d799"]
        for i in range(0, 800, 2):
            assert ix.remove(f"d{i}")
        assert len(ix.search(f"common{round_}", limit=200)) == 200
        assert ix.search(f"w{round_}x0") == []
        assert ids(ix.search(f"w{round_}x1")) != []
    ix.upsert("back", "table", "w0x0", [])
    assert ids(ix.search("w0x0")) == ["back"]


# -- persistence ----------------------------------------------------------------------------


def test_to_bytes_is_canonical_and_deterministic() -> None:
    a, b = SearchIndex(), SearchIndex()
    a.upsert("y", "model", "Ünïcode", ["b", "a"])
    a.upsert("x", "table", "Orders", [])
    b.upsert("x", "table", "Old", ["gone"])
    b.upsert("x", "table", "Orders", [])
    b.upsert("z", "table", "removed", [])
    b.upsert("y", "model", "Ünïcode", ["b", "a"])
    b.remove("z")
    assert a.to_bytes() == b.to_bytes()
    assert a.to_bytes() == (
        '{"docs":[{"id":"x","kind":"table","texts":[],"title":"Orders"},'
        '{"id":"y","kind":"model","texts":["b","a"],"title":"Ünïcode"}],"v":1}'
    ).encode()
    assert SearchIndex().to_bytes() == b'{"docs":[],"v":1}'


def test_round_trip_answers_the_same(index: SearchIndex) -> None:
    data = index.to_bytes()
    restored = SearchIndex.from_bytes(data)
    assert restored.to_bytes() == data
    assert restored.doc_ids() == index.doc_ids()
    for query in ("customer", "reve", "customer_id", "order total", "region", "zzz", "r"):
        assert restored.search(query) == index.search(query), query
    assert SearchIndex.from_bytes(bytearray(data)).to_bytes() == data


def _doc(**overrides: object) -> dict[str, object]:
    return {"id": "d", "kind": "table", "title": "t", "texts": [], **overrides}


def _dump(body: object) -> bytes:
    return json.dumps(body).encode()


BAD_INPUTS = {
    "empty": b"",
    "garbage": b"\x00\xff\xfe not json",
    "not utf-8": b'{"v":1,"docs":[{"id":"\xff"}]}',
    "truncated": b'{"docs":[{"id":"x","kind":"table","texts":[],"title":"Ord',
    "json list": b"[]",
    "json number": b"1",
    "nan": b'{"v":NaN,"docs":[]}',
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "no version": _dump({"docs": []}),
    "wrong version": _dump({"v": 2, "docs": []}),
    "string version": _dump({"v": "1", "docs": []}),
    "bool version": _dump({"v": True, "docs": []}),
    "float version": _dump({"v": 1.0, "docs": []}),
    "extra key": _dump({"v": 1, "docs": [], "x": 0}),
    "duplicate key": b'{"v":1,"v":1,"docs":[]}',
    "docs not a list": _dump({"v": 1, "docs": {}}),
    "doc not an object": _dump({"v": 1, "docs": [["d", "table", "t", []]]}),
    "doc missing field": _dump({"v": 1, "docs": [{"id": "d", "kind": "table", "title": "t"}]}),
    "doc extra field": _dump({"v": 1, "docs": [_doc(score=1)]}),
    "id not a string": _dump({"v": 1, "docs": [_doc(id=7)]}),
    "empty id": _dump({"v": 1, "docs": [_doc(id="")]}),
    "texts a string": _dump({"v": 1, "docs": [_doc(texts="abc")]}),
    "text not a string": _dump({"v": 1, "docs": [_doc(texts=[None])]}),
    "lone surrogate": b'{"v":1,"docs":[{"id":"d","kind":"table","texts":[],"title":"\\ud800"}]}',
    "repeated id": _dump({"v": 1, "docs": [_doc(), _doc(title="other")]}),
}


@pytest.mark.parametrize("data", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_from_bytes_rejects_bad_input(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        SearchIndex.from_bytes(data)


def test_from_bytes_rejects_non_bytes_and_every_truncation(index: SearchIndex) -> None:
    with pytest.raises(InvalidInput):
        SearchIndex.from_bytes("{}")  # type: ignore[arg-type]
    data = index.to_bytes()
    for n in range(len(data)):
        with pytest.raises(InvalidInput):
            SearchIndex.from_bytes(data[:n])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_from_bytes_raises_only_invalid_input_on_random_bytes(data: bytes) -> None:
    with contextlib.suppress(InvalidInput):
        SearchIndex.from_bytes(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"id": json_values | st.text(max_size=3), "kind": json_values | st.just("table"),
             "title": json_values | st.text(max_size=5),
             "texts": json_values | st.lists(st.text(max_size=5), max_size=2)}
        )
        | json_values,
        max_size=3,
    )
)
def test_from_bytes_raises_only_invalid_input_on_wrong_shapes(docs: list[object]) -> None:
    data = json.dumps({"v": 1, "docs": docs}).encode()
    try:
        restored = SearchIndex.from_bytes(data)
    except InvalidInput:
        return
    assert SearchIndex.from_bytes(restored.to_bytes()).to_bytes() == restored.to_bytes()


# -- oracle ---------------------------------------------------------------------------------

# A small alphabet makes shared words, shared prefixes and repeated identifiers common.
words = st.text(alphabet="abc", min_size=1, max_size=3)
identifiers = st.lists(words, min_size=1, max_size=3).map("_".join)
texts = st.lists(identifiers, max_size=4).map(" ".join)
documents = st.tuples(st.sampled_from(["table", "model", "answer"]), texts,
                      st.lists(texts, max_size=3))
operations = st.lists(
    st.tuples(st.integers(0, 15), st.none() | documents),  # None: remove
    max_size=40,
)
queries = st.lists(st.lists(identifiers, min_size=1, max_size=3).map(" ".join), max_size=8)


def oracle_tokens(text: str) -> set[str]:
    """Independent tokenizer for the oracle's alphabet: identifiers whole and by part."""
    out: set[str] = set()
    for ident in text.split():
        out.add(ident)
        if "_" in ident:
            out.update(ident.split("_"))
    return out


def oracle(
    docs: dict[str, tuple[str, str, list[str]]], query: str, kinds: set[str] | None
) -> list[tuple[float, str, str, str]]:
    """Every matching document as (-score, casefolded title, title, id), best first.

    Per term, a title match counts 3 and a body match 1; the last term, when it only
    matches as a prefix, counts half.
    """
    terms = list(dict.fromkeys(query.split()))
    *exact, last = terms
    found = []
    for doc_id, (kind, title, body) in docs.items():
        in_title = oracle_tokens(title)
        in_body = set().union(*map(oracle_tokens, body))
        tokens = in_title | in_body
        if kinds is not None and kind not in kinds:
            continue
        if all(t in tokens for t in exact) and any(t.startswith(last) for t in tokens):
            score = sum(3.0 if t in in_title else 1.0 for t in exact)
            if last in in_title:
                score += 3.0
            elif any(t.startswith(last) for t in in_title):
                score += 1.5
            elif last in in_body:
                score += 1.0
            else:
                score += 0.5
            found.append((-score, title.casefold(), title, doc_id))
    return sorted(found)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations, queries, st.none() | st.sets(st.sampled_from(["table", "model"])))
def test_search_agrees_with_a_brute_force_oracle(
    ops: list[tuple[int, tuple[str, str, list[str]] | None]],
    query_list: list[str],
    kinds: set[str] | None,
) -> None:
    ix = SearchIndex()
    docs: dict[str, tuple[str, str, list[str]]] = {}
    for n, doc in ops:
        doc_id = f"doc{n}"
        if doc is None:
            assert ix.remove(doc_id) == (doc_id in docs)
            docs.pop(doc_id, None)
        else:
            ix.upsert(doc_id, *doc)
            docs[doc_id] = doc
    assert ix.doc_ids() == sorted(docs)
    restored = SearchIndex.from_bytes(ix.to_bytes())
    for query in query_list:
        hits = ix.search(query, limit=200, kinds=kinds)
        expected = oracle(docs, query, kinds)
        assert [(-h.score, h.title.casefold(), h.title, h.doc_id) for h in hits] == expected
        for h in hits:
            assert (h.kind, h.title) == docs[h.doc_id][:2]
            assert h.matched == tuple(dict.fromkeys(query.split()))
        assert restored.search(query, limit=200, kinds=kinds) == hits
        for limit in (1, 2, 3):
            assert ix.search(query, limit=limit, kinds=kinds) == hits[:limit]


# -- scale and concurrency ------------------------------------------------------------------

VOCAB = [f"{a}{b}" for a in ("rev", "cost", "sale", "ord", "cust", "reg", "prod", "ship")
         for b in ("enue", "er", "es", "ion", "uct", "ment", "al", "ing", "total", "count")]


def test_ten_thousand_documents_and_a_hundred_searches() -> None:
    ix = SearchIndex()
    for i in range(10_000):
        w = [VOCAB[(i * k + k) % len(VOCAB)] for k in (1, 3, 7, 11)]
        ix.upsert(f"doc{i:05}", ("table", "model", "liveboard", "answer")[i % 4],
                  f"{w[0]} {w[1]} report {i}", [f"{w[2]}_id", f"{w[3]}Amount", f"tag{i % 97}"])
    assert len(ix) == 10_000
    for q in range(100):
        a, b = VOCAB[q % len(VOCAB)], VOCAB[(q * 7) % len(VOCAB)]
        query = (f"{a} {b[:3]}", f"report {q}", f"tag{q % 97}", a[:2], f"{a} amount")[q % 5]
        hits = ix.search(query, limit=50)
        assert len(hits) <= 50
        if q % 5 == 1:  # "report 1" matches exactly doc q's title number, as a whole word
            assert f"doc{q:05}" in ids(hits)
        for h in hits:
            assert h.matched
    [hit] = ix.search("report 1234 tag70", kinds={"table", "model", "liveboard", "answer"})
    assert hit.doc_id == "doc01234"
    assert len(ix.search("report", limit=200)) == 200
    assert ix.search("report", kinds={"answer"}, limit=200)[0].kind == "answer"


def test_concurrent_writers_and_readers() -> None:
    ix = SearchIndex()
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def writer(w: int) -> None:
        try:
            barrier.wait()
            for i in range(400):
                ix.upsert(f"w{w}-{i % 50}", "table", f"title{w} v{i}", [f"shared{i % 7}"])
                if i % 9 == 0:
                    ix.remove(f"w{w}-{(i * 3) % 50}")
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)

    def reader() -> None:
        try:
            barrier.wait()
            for i in range(400):
                for h in ix.search(f"shared{i % 7}", limit=200):
                    assert h.kind == "table"
                ix.search("tit")
                ix.to_bytes()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    restored = SearchIndex.from_bytes(ix.to_bytes())
    assert restored.doc_ids() == ix.doc_ids()
    for w in range(3):
        assert set(ids(ix.search(f"title{w}", limit=200))) == {
            d for d in ix.doc_ids() if d.startswith(f"w{w}-")
        }
