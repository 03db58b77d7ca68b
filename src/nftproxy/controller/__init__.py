"""The long-running proxy: a bounded-frequency runner with an injectable clock
(``runner``), the loop that decides what to sync and applies it (``loop``), what
its syncs report to health, metrics and logs (``observe``), the wiring of
reflectors, servers and loop (``proxy``), and the HTTP servers (``serve``).

Not compiled: it holds threads, signals and the servers' asyncio loop, none of
it hot."""
