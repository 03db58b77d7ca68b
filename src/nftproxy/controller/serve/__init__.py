"""The HTTP servers of ``run``: one asyncio thread (``http``), ``/healthz`` and
``/livez`` and the healthCheckNodePorts (``health``), ``/metrics`` (``metrics``)."""
