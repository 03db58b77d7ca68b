"""``ProxyState`` -> ``Ruleset``, pure: the tables' shape (``build``), the names of
their objects (``names``), endpoint slots (``slots``), what was applied kept per
owner (``applied``), owners kept at the kernel's state (``keep``), and the one
pipeline from settings and objects to the desired ruleset (``pipeline``).

Compiled with mypyc: ``build`` and ``names``. ``applied``, ``keep`` and
``pipeline`` are not (not on the hot path of a fresh load)."""
