"""Kubernetes objects in: the API's objects parsed and checked (``objects``,
``problems``), manifests read from files (``manifests``), and the API client, its
reflectors and the cache they fill (``client``, ``reflector``, ``cache``, ``node``).
The bottom layer: it imports nothing of nftproxy but ``nft`` and ``log``.

Compiled with mypyc: ``objects`` and ``manifests`` (on a sync's path). Not the
client, reflector and cache: they raise and catch the client's exceptions and are
not hot."""
