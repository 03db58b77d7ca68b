"""Settings: one frozen, typed :class:`Settings`, built from the flags, then a
KubeProxyConfiguration file, then kube-proxy's defaults, and validated once as
kube-proxy's ``validation.go`` does (:func:`resolve`). Nothing below the command
line sees a flag. Not compiled (mypyc): read once at start."""

from nftproxy.settings.model import DEFAULTS, Settings
from nftproxy.settings.resolve import resolve

__all__ = ["DEFAULTS", "Settings", "resolve"]
