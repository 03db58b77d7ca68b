"""The text answer of ``nftproxy explain`` (its JSON is
:func:`~nftproxy.diagnose.explain.summary`)."""

from __future__ import annotations

from nftproxy.diagnose.explain import DNAT, Outcome


def describe(outcomes: list[Outcome], src: str, dst: str, port: int, proto: str) -> str:
    """The text answer: the path of the most likely outcome, then every outcome."""
    lines = [f"{proto} {src} -> {dst} port {port}"]
    if outcomes:
        for step in outcomes[0].packet.path:
            lines.append(f"  {step.hook:<12} {step.chain}: {step.rule}")
            if step.element:
                lines.append(f"  {'':<12}   element {step.element}")
    for o in outcomes:
        pct = f"{float(o.probability) * 100:5.1f}%"
        if o.verdict == DNAT:
            where = f"DNAT to {o.packet.dst} port {o.packet.port}"
        else:
            where = {"accept": "untouched by nftproxy", "reject": "REJECT", "drop": "DROP"}.get(
                o.verdict, o.verdict
            )
        extra = ", masqueraded" if o.packet.masquerade else ""
        lines.append(f"{pct}  {where}{extra}")
    if any(o.packet.sticky for o in outcomes):
        lines.append("ClientIP affinity: the first choice is random; later connections stick")
    return "\n".join(lines) + "\n"
