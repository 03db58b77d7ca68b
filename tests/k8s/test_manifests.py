"""Reading manifests: every document is used or reported, nothing stops the rest."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import service, slice_

from nftproxy.k8s.manifests import load_paths


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

    def test_an_unparsable_file_is_an_error(self, tmp_path: Path) -> None:
        bad = _write(tmp_path / "bad.yaml", "kind: Service\n  metadata: [\n")
        _write(tmp_path / "good.yaml", json.dumps(service("a")))
        loaded = load_paths([tmp_path])
        assert [p.source for p in loaded.errors] == [str(bad)]
        assert "unreadable" in loaded.errors[0].message

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
        assert loaded.errors[0].message == "no such file or folder"


class TestNotKubernetesObjects:
    """Input that is not Kubernetes objects is an error naming the file and the
    document, never an empty set of objects."""

    def test_a_document_without_api_version_or_kind(self, tmp_path: Path) -> None:
        path = _write(
            tmp_path / "m.yaml",
            json.dumps(service("a")) + "\n---\nreplicaCount: 2\n---\nkind: Service\n",
        )
        loaded = load_paths([path])
        assert [(p.source, p.obj) for p in loaded.errors] == [
            (str(path), "document 1"),
            (str(path), "document 2"),
        ]
        assert "no apiVersion or kind" in loaded.errors[0].message
        assert loaded.objects == []  # nothing of a refused file is used

    def test_a_file_without_objects(self, tmp_path: Path) -> None:
        for name, text in (("empty.yaml", ""), ("dashes.yaml", "---\n---\n")):
            loaded = load_paths([_write(tmp_path / name, text)])
            assert [p.message for p in loaded.errors] == ["no Kubernetes object in this file"]

    def test_a_folder_without_manifests(self, tmp_path: Path) -> None:
        _write(tmp_path / "notes.txt", "x")
        assert load_paths([tmp_path]).errors[0].message.startswith("no .yaml")

    def test_an_empty_list_means_no_objects(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "l.json", json.dumps({"apiVersion": "v1", "kind": "List"}))
        loaded = load_paths([path])
        assert (loaded.errors, loaded.objects, loaded.problems) == ([], [], [])

    def test_a_demo_scenario_is_refused_with_a_hint(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "s.yaml", "node: {name: a}\nobjects: []\n")
        (error,) = load_paths([path]).errors
        assert "nftproxy demo --scenario" in error.message


class TestInvalidOwners:
    """An invalid object is recorded under the Service (or Pod) whose rules it feeds."""

    def test_services_slices_and_pods(self, tmp_path: Path) -> None:
        bad_slice = slice_("web")
        bad_slice["addressType"] = "Bogus"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"ports": [{"hostPort": 70000}]}]},
        }
        docs = [service("db", ports=[{"port": 0}]), bad_slice, pod, service("ok")]
        loaded = load_paths(
            [
                _write(
                    tmp_path / "m.json",
                    json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
                )
            ]
        )
        assert sorted(loaded.invalid) == [("ns", "db"), ("ns", "p"), ("ns", "web")]
        assert loaded.unowned == []

    def test_an_owner_that_cannot_be_told(self, tmp_path: Path) -> None:
        nameless = service("x")
        del nameless["metadata"]["name"]
        unlabelled = slice_("web")
        del unlabelled["metadata"]["labels"]
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}, "status": 1}
        path = _write(
            tmp_path / "m.yaml", "\n---\n".join(json.dumps(d) for d in (nameless, unlabelled, node))
        )
        loaded = load_paths([path])
        assert len(loaded.unowned) == 3 and loaded.invalid == {}
