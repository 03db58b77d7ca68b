"""Kubernetes proxy semantics, pure: which VIPs exist, which endpoints serve them
after traffic policies, terminating fallback, topology and affinity
(``state.compute_state``). Objects and node settings in, ``ProxyState`` out.

Compiled with mypyc (``state``)."""
