"""nftproxy: Kubernetes Services as flat, map-driven nftables tables."""

__version__ = "0.1.0"
