"""Reading manifests: every document is used or reported, nothing stops the rest."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import service, slice_

from nftproxy.manifests import load_paths


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class TestLoadPaths:
    def test_multi_document_yaml_and_lists(self, tmp_path: Path) -> None:
        _write(
            tmp_path / "a.yaml",
            "\n---\n".join(
                [
                    json.dumps(service("a")),
                    json.dumps(
                        {"apiVersion": "v1", "kind": "List", "items": [service("b"), slice_("b")]}
                    ),
                ]
            ),
        )
        loaded = load_paths([tmp_path / "a.yaml"])
        assert [type(o).__name__ for _, o in loaded.objects] == [
            "Service",
            "Service",
            "EndpointSlice",
        ]
        assert loaded.problems == []

    def test_json_and_folders_recursively(self, tmp_path: Path) -> None:
        _write(tmp_path / "x" / "svc.json", json.dumps(service("a")))
        _write(tmp_path / "x" / "y" / "eps.yml", json.dumps(slice_("a")))
        _write(tmp_path / "notes.txt", "not a manifest")
        loaded = load_paths([tmp_path])
        assert sorted(Path(src).name for src, _ in loaded.objects) == ["eps.yml", "svc.json"]

    def test_a_yaml_flow_mapping_is_not_mistaken_for_json(self, tmp_path: Path) -> None:
        """A .yaml file that starts with "{" is read as JSON when it is JSON (kubectl
        get -o json > x.yaml), else as YAML."""
        flow = "{apiVersion: v1, kind: Service, metadata: {name: a, namespace: ns},"
        flow += " spec: {clusterIP: 172.30.0.10, ports: [{port: 80}]}}\n"
        _write(tmp_path / "flow.yaml", flow)
        _write(tmp_path / "json.yaml", json.dumps(service("b", clusterIP="172.30.0.11")))
        loaded = load_paths([tmp_path])
        assert loaded.problems == []
        assert sorted(o.name for _, o in loaded.objects) == ["a", "b"]

    def test_unparsable_file_is_reported_and_others_still_load(self, tmp_path: Path) -> None:
        bad = _write(tmp_path / "bad.yaml", "kind: Service\n  metadata: [\n")
        _write(tmp_path / "good.yaml", json.dumps(service("a")))
        loaded = load_paths([tmp_path])
        assert len(loaded.objects) == 1
        assert [(p.source, p.note) for p in loaded.problems] == [(str(bad), False)]
        assert "unreadable" in loaded.problems[0].message

    def test_invalid_object_names_file_object_and_field(self, tmp_path: Path) -> None:
        doc = service("broken", ports=[{"name": "p", "port": 0}])
        path = _write(tmp_path / "s.yaml", json.dumps(doc) + "\n---\n" + json.dumps(service("ok")))
        loaded = load_paths([path])
        assert [o.name for _, o in loaded.objects] == ["ok"]
        (problem,) = loaded.problems
        assert (problem.source, problem.obj, problem.field) == (
            str(path),
            "Service ns/broken",
            "spec.ports[0].port",
        )
        assert str(problem).startswith(f"{path}: Service ns/broken: spec.ports[0].port: ")

    def test_other_kinds_are_noted_not_errors(self, tmp_path: Path) -> None:
        path = _write(
            tmp_path / "cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"
        )
        loaded = load_paths([path])
        assert loaded.objects == []
        assert [(p.obj, p.note) for p in loaded.problems] == [("ConfigMap default/c", True)]

    def test_missing_path(self, tmp_path: Path) -> None:
        loaded = load_paths([tmp_path / "nope"])
        assert loaded.problems[0].message == "no such file or folder"
