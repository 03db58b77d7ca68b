"""A kubeconfig's ``tokenFile``, read again whenever it changes.

kubelet rotates a pod's projected service-account token by swapping the file
(kubeadm's kube-proxy kubeconfig names it as ``tokenFile``); client-go reads the
file again, the Python client only once, and its requests then fail with 401
once the old token expires. :func:`follow_token_file` gives the client a hook
that looks at the file before each request (one ``stat``) and takes the new
token when the file changed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

API_KEY = "BearerToken"
"""Where the client's kubeconfig loader keeps the token (with its "Bearer " prefix)."""


def token_file(kubeconfig: str) -> Path | None:
    """The current context's user's ``tokenFile`` (relative to the kubeconfig's
    folder, as client-go resolves it), or None."""
    doc = yaml.safe_load(Path(kubeconfig).read_text()) or {}
    contexts = {c.get("name"): c.get("context") or {} for c in doc.get("contexts") or []}
    user_name = contexts.get(doc.get("current-context"), {}).get("user")
    users = {u.get("name"): u.get("user") or {} for u in doc.get("users") or []}
    path = users.get(user_name, {}).get("tokenFile")
    if not isinstance(path, str) or not path:
        return None
    return Path(kubeconfig).resolve().parent / path


class TokenFile:
    """The client's ``refresh_api_key_hook``: the token, read again when its file
    changed (another inode, mtime or size)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reads = 0
        self._seen: tuple[int, int, int] | None = None

    def refresh(self, configuration: Any) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            return  # kept: the request says whether the last token still works
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._seen:
            return
        token = self.path.read_text().strip()
        if token:
            configuration.api_key[API_KEY] = f"Bearer {token}"
            self._seen = seen
            self.reads += 1


def follow_token_file(configuration: Any, kubeconfig: str) -> TokenFile | None:
    """Make the client follow the kubeconfig's tokenFile, if it names one."""
    path = token_file(kubeconfig)
    if path is None:
        return None
    follower = TokenFile(path)
    configuration.refresh_api_key_hook = follower.refresh
    return follower
