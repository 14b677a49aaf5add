"""``pgshift sync``: keep SQLite and PostgreSQL converged while one of them takes writes.

- :mod:`pgshift.sync.sqlite_capture` — plain-SQL triggers and the SQLite change log;
- :mod:`pgshift.sync.image` — decoding the keys and row images they write;
- :mod:`pgshift.sync.tables` — per-table apply statements for PostgreSQL (with conflicts);
- :mod:`pgshift.sync.apply` — the batched, exactly-once to-postgres apply loop;
- :mod:`pgshift.sync.pg_capture` — PostgreSQL trigger capture, consumed as a queue;
- :mod:`pgshift.sync.apply_sqlite` — the to-sqlite applier (the way back);
- :mod:`pgshift.sync.state` — checkpoint, parked changes and conflicts in PostgreSQL;
- :mod:`pgshift.sync.ops` — install, uninstall, status, fence and drain (the CLI's calls);
- :mod:`pgshift.sync.metrics` — status as Prometheus text.
"""
