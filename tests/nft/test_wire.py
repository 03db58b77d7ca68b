"""The netlink decoding without a kernel: attributes, values, expressions into terms."""

from __future__ import annotations

import errno
import struct

import pytest

from nftproxy.nft import expressions as ex
from nftproxy.nft import values
from nftproxy.nft.errors import NetlinkError
from nftproxy.nft.expressions import Rules
from nftproxy.nft.model import (
    DataType,
    Dnat,
    DnatMap,
    Family,
    Field,
    MarkSet,
    MarkTest,
    Match,
    Numgen,
    Op,
    Raw,
    SetRef,
    Verdict,
    VerdictKind,
    VMap,
)
from nftproxy.nft.wire import (
    NLM_F_DUMP_INTR,
    attribute_list,
    attributes,
    data_value,
    encode,
    replies,
)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def data(raw: bytes) -> bytes:
    return encode({1: raw})


def test_attributes_round_trip_with_padding() -> None:
    wire = encode({1: b"abc", 2: u32(7), 3: b""})
    assert len(wire) % 4 == 0
    assert attributes(wire) == {1: b"abc", 2: u32(7), 3: b""}
    assert attribute_list(encode({1: b"x"}) + encode({1: b"yz"})) == [b"x", b"yz"]
    assert data_value(data(b"\x0a\0\0\x01")) == b"\x0a\0\0\x01"


def _message(kind: int, seq: int, body: bytes, flags: int = 0) -> bytes:
    padding = b"\0" * (-len(body) % 4)
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body + padding


def test_replies_end_fail_and_interrupt() -> None:
    nfgen = b"\x02\0\0\0"
    one = _message(0x0A0D, 5, nfgen + b"body")
    done = _message(3, 5, b"\0\0\0\0")
    stale = _message(0x0A0D, 4, nfgen + b"stale")
    assert replies(one + stale + done, 5) == ([b"body"], True, False)
    assert replies(one, 5) == ([b"body"], False, False)
    error = _message(2, 5, struct.pack("=i", -errno.ENOENT) + b"\0" * 16)
    with pytest.raises(NetlinkError) as err:
        replies(error, 5)
    assert err.value.errno == errno.ENOENT
    assert replies(_message(2, 5, b"\0" * 20), 5) == ([], True, False)  # an acknowledgement
    # An interrupted dump is reported, and read on to its end (Socket.dump then raises).
    flagged = _message(0x0A0D, 5, nfgen + b"late", NLM_F_DUMP_INTR)
    assert replies(flagged, 5) == ([b"late"], False, True)
    assert replies(flagged + done, 5) == ([b"late"], True, True)


def test_values() -> None:
    assert values.datatypes((7 << 18) | (12 << 12) | (13 << 6) | 4) == (
        DataType.ADDR,
        DataType.PROTO,
        DataType.SERVICE,
        DataType.INDEX,
    )
    assert values.layout((DataType.ADDR, DataType.PROTO, DataType.SERVICE), Family.IP, 12) == [
        (0, 4),
        (4, 1),
        (8, 2),
    ]
    assert values.layout((DataType.SERVICE,), Family.IP, 2) == [(0, 2)]
    ip = bytes([10, 0, 0, 0])
    assert values.span(DataType.ADDR, Family.IP, ip, bytes([10, 255, 255, 255])) == "10.0.0.0/8"
    assert values.span(DataType.ADDR, Family.IP, ip, ip) == "10.0.0.0"
    assert values.span(DataType.ADDR, Family.IP, ip, bytes([10, 0, 0, 5])) == "10.0.0.0-10.0.0.5"
    assert values.span(DataType.SERVICE, Family.IP, u32(80)[2:], u32(90)[2:]) == "80-90"
    assert values.prefix(Family.IP6, bytes.fromhex("fd000010009600000000000000"), 112) == (
        "fd00:10:96::/112"
    )
    assert values.scalar(DataType.PROTO, Family.IP, b"\x84") == "sctp"
    assert values.scalar(DataType.PROTO, Family.IP, b"\x2f") == "47"
    assert values.scalar(DataType.INDEX, Family.IP, struct.pack("<I", 2)) == "2"


def payload(dreg: int, base: int, offset: int, length: int) -> tuple[str, dict[int, bytes]]:
    return "payload", {1: u32(dreg), 2: u32(base), 3: u32(offset), 4: u32(length)}


def cmp(sreg: int, op: int, raw: bytes) -> tuple[str, dict[int, bytes]]:
    return "cmp", {1: u32(sreg), 2: u32(op), 3: data(raw)}


def meta(dreg: int, key: int) -> tuple[str, dict[int, bytes]]:
    return "meta", {1: u32(dreg), 2: u32(key)}


def bitwise(reg: int, mask: int, xor: int) -> tuple[str, dict[int, bytes]]:
    return "bitwise", {
        1: u32(reg),
        2: u32(reg),
        3: u32(4),
        4: data(struct.pack("<I", mask)),
        5: data(struct.pack("<I", xor)),
    }


def verdict(code: int, chain: str | None = None) -> tuple[str, dict[int, bytes]]:
    inner = {1: struct.pack(">i", code)} | ({2: chain.encode() + b"\0"} if chain else {})
    return "immediate", {1: u32(0), 2: encode({2: encode(inner)})}


RULES = Rules(Family.IP, {"service-ips": 12, "backends": 16, "cluster-ips": 4})
DADDR = payload(1, 1, 16, 4)


@pytest.mark.parametrize(
    ("kind", "family", "raw"),
    [
        (DataType.ADDR, Family.IP, bytes([10, 0, 0, 1])),
        (DataType.ADDR, Family.IP6, bytes.fromhex("fd000010009600000000000000000001")),
        (DataType.PROTO, Family.IP, bytes([6])),
        (DataType.PROTO, Family.IP6, bytes([99])),
        (DataType.SERVICE, Family.IP, u32(8080)[2:]),
        (DataType.INDEX, Family.IP, (49).to_bytes(4, "little")),
    ],
)
def test_pack_is_the_inverse_of_scalar(kind: DataType, family: Family, raw: bytes) -> None:
    assert values.pack(kind, family, values.scalar(kind, family, raw)) == raw
    assert values.length((kind,), family) == len(raw)


def test_pack_refuses_what_the_kernel_cannot_hold() -> None:
    for kind, text in [
        (DataType.ADDR, "10.0.0.300"),
        (DataType.PROTO, "256"),
        (DataType.SERVICE, "65536"),
        (DataType.SERVICE, "-1"),
        (DataType.INDEX, "x"),
    ]:
        with pytest.raises(ValueError, match="not a"):
            values.pack(kind, Family.IP, text)
    concat = (DataType.ADDR, DataType.PROTO, DataType.SERVICE, DataType.INDEX)
    assert values.length(concat, Family.IP) == 16
    assert values.length(concat, Family.IP6) == 28


def test_prefix_match_and_drop() -> None:
    masked = [
        DADDR,
        bitwise(1, int.from_bytes(bytes([255, 240, 0, 0]), "little"), 0),
        cmp(1, 0, bytes([10, 96, 0, 0])),
        verdict(0),
    ]
    assert RULES.terms(masked) == (
        Match((Field.DADDR,), "10.96.0.0/12"),
        Verdict(VerdictKind.DROP),
    )
    short = [payload(1, 1, 16, 2), cmp(1, 1, bytes([10, 96])), verdict(-3, "x")]
    assert RULES.terms(short) == (
        Match((Field.DADDR,), "10.96.0.0/16", Op.NE),
        Verdict(VerdictKind.JUMP, "x"),
    )


def test_concatenated_lookups() -> None:
    key = [DADDR, meta(9, ex.META_L4PROTO), payload(10, 2, 2, 2)]
    vmap = [*key, ("lookup", {1: b"service-ips\0", 2: u32(1), 3: u32(0)})]
    assert RULES.terms(vmap) == (VMap((Field.DADDR, Field.L4PROTO, Field.DPORT), "service-ips"),)
    numgen = ("numgen", {1: u32(11), 2: u32(3), 3: u32(1)})
    dnat = [
        *key,
        numgen,
        ("lookup", {1: b"backends\0", 2: u32(1), 3: u32(1)}),
        ("nat", {1: u32(1), 2: u32(2), 3: u32(1), 5: u32(9)}),
    ]
    assert RULES.terms(dnat) == (
        DnatMap((Field.DADDR, Field.L4PROTO, Field.DPORT, Numgen(3)), "backends"),
    )
    inverted = [DADDR, ("lookup", {1: b"cluster-ips\0", 2: u32(1), 5: u32(1)})]
    assert RULES.terms(inverted) == (Match((Field.DADDR,), SetRef("cluster-ips"), Op.NE),)


def test_marks_and_constants() -> None:
    mark = meta(1, ex.META_MARK)
    set_mark = ("meta", {2: u32(ex.META_MARK), 3: u32(1)})
    assert RULES.terms([mark, bitwise(1, 0xFFFFBFFF, 0x4000), set_mark]) == (MarkSet(0x4000),)
    assert RULES.terms([mark, bitwise(1, 0xFFFFFFFF, 0x4000), set_mark]) == (
        MarkSet(0x4000, xor=True),
    )
    test = [mark, bitwise(1, 0x4000, 0), cmp(1, 0, b"\0\0\0\0")]
    assert RULES.terms(test) == (MarkTest(0x4000, set_=False),)
    static = [
        ("immediate", {1: u32(1), 2: data(bytes([10, 0, 0, 1]))}),
        ("immediate", {1: u32(2), 2: data(struct.pack(">H", 8080) + b"\0\0")}),
        ("nat", {1: u32(1), 2: u32(2), 3: u32(1), 5: u32(2)}),
    ]
    assert RULES.terms(static) == (Dnat("10.0.0.1", 8080),)


def test_what_is_not_ours_is_raw() -> None:
    counter = ("counter", {1: b"\0" * 8})
    protocol = payload(1, 1, 9, 1)  # ip protocol: nftproxy matches meta l4proto instead
    terms = RULES.terms([counter, protocol, cmp(1, 0, b"\x06"), verdict(1)])
    assert [type(t) for t in terms] == [Raw, Raw, Raw, Verdict]
    assert terms[0].text.startswith("[counter")  # type: ignore[union-attr]
    state_and_more = [("ct", {1: u32(1), 2: u32(0), 3: b"\0"})]  # a direction: not ours
    assert isinstance(RULES.terms(state_and_more)[0], Raw)
