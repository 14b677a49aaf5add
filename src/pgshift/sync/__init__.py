"""``pgshift sync``: keep SQLite and PostgreSQL converged while one of them takes writes.

- :mod:`pgshift.sync.sqlite_capture` — plain-SQL triggers and the SQLite change log;
- :mod:`pgshift.sync.image` — decoding the keys and row images they write;
- :mod:`pgshift.sync.tables` — per-table apply statements for PostgreSQL (with conflicts);
- :mod:`pgshift.sync.apply` — the batched, exactly-once to-postgres apply loop;
- :mod:`pgshift.sync.pg_capture` — PostgreSQL trigger capture, consumed as a queue
  (its fence marker, and the flip's rebase of green's early writes);
- :mod:`pgshift.sync.pg_logical` — PostgreSQL capture by logical decoding (a slot);
- :mod:`pgshift.sync.apply_sqlite` — the to-sqlite applier (the way back);
- :mod:`pgshift.sync.state` — checkpoint, parked changes and conflicts in PostgreSQL;
- :mod:`pgshift.sync.verbs` — **the public calls**: install, run, run_dual, drain, flip,
  flip_back, status, plan, pause, resume, trim, uninstall, with typed results
  (:mod:`pgshift.sync.results`). Use them as ``from pgshift.sync import verbs as sync``.
  (They are not re-exported here: ``pgshift.sync.trim`` is a submodule, and a
  package attribute ``trim`` would be the module or the verb depending on import order);
- :mod:`pgshift.sync.ops` — install, uninstall and status on both sides;
- :mod:`pgshift.sync.cutover` — fences, drains and the flips both ways;
- :mod:`pgshift.sync.planning` — ``sync plan`` and the ``--tables-config`` file;
- :mod:`pgshift.sync.identity` — negative PostgreSQL ids before the flip, max+1 after;
- :mod:`pgshift.sync.trim` — deleting applied rows of the SQLite change log;
- :mod:`pgshift.sync.metrics` — status as Prometheus text, and the /metrics endpoint.
"""
