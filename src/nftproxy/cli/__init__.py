"""The ``nftproxy`` command: the only place argparse lives. ``main`` builds the
parser and dispatches; ``flags`` is kube-proxy's flag table and turns flags into
``Settings``; one module per command (``render``, ``apply``, ``diff``,
``cleanup``, ``run``, ``explain``, ``trace``, ``demo``). Not compiled."""
