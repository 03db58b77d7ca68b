"""The nftables library, the part knftables plays for kube-proxy: typed objects
(``model``), transactions (``transaction``), the one text renderer (``render``),
nft's JSON parsed (``parse``), the kernel read and written over netlink (``read``,
``write``, ``wire``, ``values``, ``expressions``), staged loads (``stages``), the
``Kernel`` seam with libnftables behind it (``kernel``) and conntrack
(``conntrack``), and a strict in-memory ``Kernel`` for tests (``fake``). It
imports nothing of nftproxy outside itself.

Compiled with mypyc: expressions, read, render, stages, transaction, values,
wire, write. Not ``model`` (mypyc's frozen dataclasses cannot be unpickled, and
``diff``'s reader sends tables back pickled), ``errors`` (mypyc refuses OSError
subclasses), ``kernel``, ``conntrack`` and ``fake``."""
