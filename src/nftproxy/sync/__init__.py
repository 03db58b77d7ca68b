"""One sync and what follows it: plan the difference (``plan``), apply it
atomically (``apply``), keep a checkpoint (``checkpoint``), then the after-sync
steps that ``apply`` and ``run`` share (``after``: stale conntrack flows,
``affinity``), and the one-shot kernel work: ``cleanup``, ``features``,
``sysctls``, the drift ``report`` and ``reach`` (which flows a ruleset serves).

Compiled with mypyc: ``plan``. Not ``apply``: the worker that reads the kernel for
``diff`` sends tables back pickled, and tenacity's decorators need plain Python."""
