"""A list body's items, parsed span by span, are exactly the body's items."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nftproxy.k8s.listbody import parse_list

SEPARATOR_TEXT = '},{"metadata":'
"""What the spans are cut at, to be found inside items too."""

text = st.one_of(
    st.text(max_size=12),
    st.sampled_from([SEPARATOR_TEXT, "}]}", '"items":[', "},{", "\\", '"']),
)
leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), text)
value = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(["metadata", "a", "b"]), inner, max_size=3),
    ),
    max_leaves=12,
)
item = st.fixed_dictionaries(
    {"metadata": st.fixed_dictionaries({"name": text})}, optional={"spec": value}
)


def _list(items: list[Any]) -> dict[str, Any]:
    return {
        "kind": "EndpointSliceList",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"resourceVersion": "7"},
        "items": items,
    }


def _parsed(data: bytes, chunk: int = 1 << 20) -> tuple[Any, list[Any]]:
    head, items = parse_list(data[i : i + chunk] for i in range(0, len(data), chunk))
    return head, list(items)


@settings(max_examples=300, deadline=None)
@given(st.lists(item, max_size=6), st.integers(1, 64))
def test_every_item_comes_back_in_order(items: list[Any], chunk: int) -> None:
    head, got = _parsed(orjson.dumps(_list(items)), chunk)
    assert got == items
    assert head["metadata"] == {"resourceVersion": "7"}
    assert head["kind"] == "EndpointSliceList"


def test_items_are_taken_as_the_body_arrives() -> None:
    """An item is given once its bytes are in, before the rest of the body is read,
    also where the text the spans are cut at occurs inside an item (in a nested
    array: in a string its quotes are escaped)."""
    inside = {"endpoints": [{"a": 1}, {"metadata": {}}], "note": SEPARATOR_TEXT}
    items = [{"metadata": {"name": f"s{i}"}, **inside} for i in range(50)]
    data = orjson.dumps(_list(items))
    assert data.count(SEPARATOR_TEXT.encode()) == 49 + 50
    read = []

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 100):
            read.append(i)
            yield data[i : i + 100]

    head, got = parse_list(chunks())
    assert next(got) == items[0]
    assert len(read) <= 4 < len(data) // 100
    assert [items[0], *got] == items
    assert head["metadata"] == {"resourceVersion": "7"}


@pytest.mark.parametrize(
    "body",
    [
        _list([{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]),
        {"items": [{"metadata": {"name": "a"}}], "metadata": {"resourceVersion": "7"}},
        _list([{"metadata": {"name": "a"}}, {"kind": "Pod", "metadata": {"name": "b"}}]),
        _list([]),
        _list([1, "x", None]),
        {"metadata": {"resourceVersion": "7"}, "items": "not a list"},
        ["not", "a", "list"],
    ],
    ids=["compact", "items-first", "keys-change", "empty", "not-objects", "items-bad", "array"],
)
@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_every_shape_comes_back_as_parsed_whole(body: Any, indent: int | None, chunk: int) -> None:
    data = json.dumps(body, indent=indent, separators=None if indent else (",", ":")).encode()
    head, items = _parsed(data, chunk)
    whole = json.loads(data)
    if isinstance(whole, dict) and isinstance(whole.get("items"), list):
        assert items == whole.pop("items")
        assert {k: v for k, v in head.items() if k != "items"} == whole
    else:
        assert (head, items) == (whole, [])


@pytest.mark.parametrize(
    "data",
    [b'{"metadata":{},"items":[{"metadata":{}},{"metadata":]}', b"not json", b""],
)
@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_a_body_that_is_not_json_raises(data: bytes, chunk: int) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        _parsed(data, chunk)
