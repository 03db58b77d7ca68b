"""A kubeconfig's tokenFile: found as client-go finds it, read again when it changes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kubernetes import client

from nftproxy.k8s.tokenfile import API_KEY, TokenFile, follow_token_file, token_file

FIXTURE = (
    Path(__file__).resolve().parents[1] / "fixtures" / "kube-proxy" / "kubeadm-kubeconfig.conf"
)


def test_kubeadms_kubeconfig_names_the_accounts_token() -> None:
    assert token_file(str(FIXTURE)) == Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def test_a_relative_path_is_the_kubeconfigs_folders_and_no_token_file_is_none(
    tmp_path: Path,
) -> None:
    text = FIXTURE.read_text().replace("/var/run/secrets/kubernetes.io/serviceaccount/", "")
    (tmp_path / "kc").write_text(text)
    assert token_file(str(tmp_path / "kc")) == tmp_path / "token"
    (tmp_path / "other").write_text(text.replace("current-context: default", "current-context: x"))
    assert token_file(str(tmp_path / "other")) is None
    assert follow_token_file(client.Configuration(), str(tmp_path / "other")) is None


def test_the_token_is_read_when_its_file_changes(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("one\n")
    cfg: Any = client.Configuration()
    follower = TokenFile(token)
    cfg.refresh_api_key_hook = follower.refresh
    assert cfg.get_api_key_with_prefix(API_KEY) == "Bearer one"
    assert cfg.get_api_key_with_prefix(API_KEY) == "Bearer one"
    assert follower.reads == 1  # unchanged: one stat, no read
    new = tmp_path / "token.new"
    new.write_text("two\n")
    os.replace(new, token)
    assert cfg.get_api_key_with_prefix(API_KEY) == "Bearer two"
    token.unlink()  # gone for a moment: the last token is kept
    assert cfg.get_api_key_with_prefix(API_KEY) == "Bearer two"
