"""Does this kernel and nft do everything the ruleset needs? Asked before the first sync.

Each feature is a small table checked by the kernel in dry-run mode (validated,
never committed), so a missing one is named instead of failing a large
transaction with an opaque error.
"""

from __future__ import annotations

from nftproxy.nft.kernel import Libnftables, NftError

PROBE = "nftproxy-probe"

FEATURES = {
    "concatenated map keys with numgen (endpoint choice)": (
        "map m { typeof ip daddr . meta l4proto . th dport . numgen random mod 1 : "
        "ip daddr . th dport; }\n"
        "chain c { meta l4proto { tcp, udp } dnat to ip daddr . meta l4proto . th dport . "
        "numgen random mod 2 map @m; }"
    ),
    "verdict maps with concatenated keys (dispatch)": (
        "map v { type ipv4_addr . inet_proto . inet_service : verdict; }\n"
        "chain c { ip daddr . meta l4proto . th dport vmap @v; }"
    ),
    "concatenated ranges (loadBalancerSourceRanges)": (
        "set s { type ipv4_addr . inet_proto . inet_service . ipv4_addr; flags interval; "
        "elements = { 1.2.3.4 . tcp . 80 . 10.0.0.0/8 }; }"
    ),
    "dynamic sets with timeouts (session affinity)": (
        "set a { type ipv4_addr; flags dynamic,timeout; timeout 10s; }\n"
        "chain c { update @a { ip saddr }; }"
    ),
    "fib (local-traffic detection)": "chain c { fib saddr type local accept; }",
    "reject with TCP reset": (
        "chain c { type filter hook input priority 0; meta l4proto tcp reject with tcp reset; }"
    ),
    "nat: dnat, masquerade fully-random": (
        "chain n { type nat hook prerouting priority -100; "
        "meta l4proto tcp dnat to 10.0.0.1:80; }\n"
        "chain p { type nat hook postrouting priority 100; "
        "masquerade fully-random; }"
    ),
}


def missing_features(
    kernel: Libnftables | None = None, features: dict[str, str] = FEATURES
) -> list[tuple[str, str]]:
    """(feature, error) for every feature this kernel refuses; empty when all work.

    All are checked in one dry run first (one table each); only when that is
    refused is each checked alone, to name the missing ones."""
    k = kernel or Libnftables()
    scripts = {
        name: f"table ip {PROBE}-{n} {{\n{body}\n}}\n"
        for n, (name, body) in enumerate(features.items())
    }
    try:
        k.check("".join(scripts.values()))
    except NftError:
        pass
    else:
        return []
    missing = []
    for name, script in scripts.items():
        try:
            k.check(script)
        except NftError as err:
            missing.append((name, err.message.splitlines()[0] if err.message else str(err)))
    return missing
