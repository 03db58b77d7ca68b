"""Names and comments: every name the API server accepts becomes text nft accepts."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import NODE, endpoint, service, slice_

from nftproxy.k8s.manifests import Loaded, load_objects
from nftproxy.nft.render import COMMENT_MAX, UnsafeTextError, quoted, render_script
from nftproxy.proxy.state import compute_state
from nftproxy.ruleset import names
from nftproxy.ruleset.build import build

NS63 = "n" * 62 + "1"
SVC63 = "s" + "v" * 61 + "2"
PORT63 = "p" * 63
POD253 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])


def load(*docs: dict[str, Any]) -> Loaded:
    loaded = Loaded()
    load_objects(iter(docs), "test.yaml", loaded)
    return loaded


class TestComment:
    def test_a_short_safe_comment_is_kept(self) -> None:
        assert names.comment("ns/svc/tcp/http") == "ns/svc/tcp/http"

    def test_a_long_comment_is_cut_to_128_with_a_hash(self) -> None:
        text = f"{NS63}/{SVC63}/tcp/{PORT63}"
        cut = names.comment(text)
        assert len(cut) == COMMENT_MAX
        ns, svc, proto, port = cut[:-9].split("/")
        assert (ns[:30], svc[:30], proto, port[:30]) == (NS63[:30], SVC63[:30], "tcp", PORT63[:30])
        assert cut[-9] == "~"

    def test_two_long_comments_that_share_their_beginning_differ(self) -> None:
        a = names.comment(f"{NS63}/{SVC63}/tcp/{'a' * 63}")
        b = names.comment(f"{NS63}/{SVC63}/tcp/{'a' * 62}b")
        assert a != b

    def test_unsafe_characters_are_replaced(self) -> None:
        assert names.comment('a"b\\c\nd') == "a?b?c?d"

    def test_the_renderer_refuses_a_quote(self) -> None:
        with pytest.raises(UnsafeTextError):
            quoted('x" ; flush ruleset ; "')

    def test_the_renderer_refuses_129_bytes(self) -> None:
        with pytest.raises(UnsafeTextError):
            quoted("x" * 129)


class TestApiNames:
    """Objects are checked with the API server's name rules; a bad one is reported
    with its field and skipped."""

    @pytest.mark.parametrize(
        ("doc", "field"),
        [
            (service(name="Svc"), "metadata.name"),
            (service(name="1svc"), "metadata.name"),
            (service(name="s" * 64), "metadata.name"),
            (service(name='a"b'), "metadata.name"),
            (service(ns="a_b"), "metadata.namespace"),
            (service(ports=[{"name": "-p", "port": 80}]), "spec.ports[0].name"),
            (service(ports=[{"name": "p" * 64, "port": 80}]), "spec.ports[0].name"),
            (slice_("svc", ports=[{"name": "P", "port": 80}]), "ports[0].name"),
            (slice_("s" * 64), "metadata.labels[kubernetes.io/service-name]"),
            (slice_("svc", name="a..b"), "metadata.name"),
        ],
    )
    def test_an_invalid_name_is_reported_with_its_field(self, doc: Any, field: str) -> None:
        loaded = load(doc)
        assert not loaded.objects
        (problem,) = loaded.problems
        assert problem.field == field and problem.source == "test.yaml"

    def test_names_of_every_legal_length_are_accepted(self) -> None:
        loaded = load(
            service(name=SVC63, ns=NS63, ports=[{"name": PORT63, "port": 80}]),
            slice_(SVC63, endpoint("10.1.0.1"), ns=NS63, ports=[{"name": PORT63, "port": 80}]),
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": POD253, "namespace": NS63},
                "spec": {
                    "nodeName": NODE.name,
                    "containers": [{"ports": [{"containerPort": 80, "hostPort": 8080}]}],
                },
                "status": {"phase": "Running", "podIPs": [{"ip": "10.1.0.9"}]},
            },
        )
        assert not loaded.problems and len(loaded.objects) == 3

    def test_maximal_names_render_comments_nft_accepts(self) -> None:
        loaded = load(
            service(
                name=SVC63,
                ns=NS63,
                ports=[{"name": PORT63, "port": 80}],
                sessionAffinity="ClientIP",
            ),
            slice_(SVC63, endpoint("10.1.0.1"), ns=NS63, ports=[{"name": PORT63, "port": 80}]),
        )
        script = render_script(build(compute_state(loaded.objects, NODE)), names.TABLE)
        comments = [part.split('"')[0] for part in script.split('comment "')[1:]]
        assert comments and max(len(c) for c in comments) <= COMMENT_MAX
