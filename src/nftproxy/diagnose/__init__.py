"""Seeing into the rules: where a connection goes and why (``explain``, read from
the typed rules, no packet sent), the path real packets take (``trace``, nft's
tracing), and their text and JSON output (``describe``). Not compiled."""
