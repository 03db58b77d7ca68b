"""The built image run as a container runtime runs it, with what the chart's
unprivileged mode grants: buildah mounts the image's root, and each command runs
chrooted into it in a mount namespace of its own, with the root and /proc/sys
read-only, a writable /var/lib/nftproxy (the checkpoint), tmpfs /tmp and /run,
and CAP_NET_ADMIN as the only capability (setpriv clears the bounding set, so
the kernel itself refuses the rest), in a lab's network namespace. The chart's
init container, which alone is privileged, runs with every capability and a
writable /proc/sys."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# $1 the root, $2 the writable state folder, $3 the volumes ("host:/path ...",
# read-only), $4 "privileged" or not; then the command.
SCRIPT = r"""
set -e
root=$1 state=$2 volumes=$3 privileged=$4
shift 4
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t proc proc "$root/proc"
if [ "$privileged" != privileged ]; then
    mount --bind "$root/proc/sys" "$root/proc/sys"
    mount -o remount,bind,ro "$root/proc/sys"
fi
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/tmp"
mount -t tmpfs tmpfs "$root/run"
mount --bind "$state" "$root/var/lib/nftproxy"
for volume in $volumes; do
    dest=$root${volume#*:}
    [ -d "$dest" ] || mkdir -p "$dest"  # under /tmp or /run (tmpfs), or made by the image
    mount --bind "${volume%%:*}" "$dest"
    mount -o remount,bind,ro "$dest"
done
[ "$privileged" = privileged ] && exec chroot "$root" "$@"
exec chroot "$root" setpriv --bounding-set=-all,+net_admin --inh-caps=-all -- "$@"
"""


def buildah(*args: str) -> str:
    cache = os.environ.get("NFTPROXY_IMAGE_CACHE", "/var/cache/nftproxy-image")
    storage = ["--root", f"{cache}/storage", "--runroot", f"{cache}/run"]
    cmd = ["buildah", *storage, "--storage-driver", "overlay", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


@dataclass
class Image:
    """One container of the image, its root mounted."""

    root: Path
    state: Path

    def command(
        self,
        netns: str,
        *argv: str,
        volumes: Mapping[str, Path] | None = None,
        privileged: bool = False,
    ) -> list[str]:
        """argv inside the image, in netns; volumes (path inside -> host path), each
        under /tmp or /run or a folder the image has; privileged: every capability
        and a writable /proc/sys (an init container, or kube-proxy's own pod)."""
        mounts = " ".join(f"{path}:{dest}" for dest, path in (volumes or {}).items())
        mode = "privileged" if privileged else "net_admin"
        return [
            "ip", "netns", "exec", netns, "unshare", "--mount", "--", "sh", "-c", SCRIPT,
            "sh", str(self.root), str(self.state), mounts, mode, *argv,
        ]  # fmt: skip

    def run(
        self,
        netns: str,
        *argv: str,
        volumes: Mapping[str, Path] | None = None,
        privileged: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        cmd = self.command(netns, *argv, volumes=volumes, privileged=privileged)
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)


@contextmanager
def container(image: str, state: Path) -> Iterator[Image]:
    """A container of image, removed afterwards."""
    name = buildah("from", image)
    try:
        yield Image(Path(buildah("mount", name)), state)
    finally:
        buildah("umount", name)
        buildah("rm", name)
