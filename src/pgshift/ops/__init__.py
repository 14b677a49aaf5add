"""Operations around the cutover: ``provision``, ``archive`` and ``optimize``.

Each verb is one library call with a typed result (``to_dict()`` for ``--json``);
the CLI commands in ``pgshift.cli`` only parse and print, and the rollout engine
calls the same functions as steps:

- :func:`pgshift.ops.provision.provision` prepares the production database (role,
  database, extensions, grants, role defaults), idempotently.
- :func:`pgshift.ops.archive.archive` / :func:`pgshift.ops.archive.verify_archive`
  keep blue's SQLite database and config files, checksummed.
- :func:`pgshift.ops.optimize.optimize` proposes and applies indexes from real usage
  and reports the settings worth tuning after go-live.
"""
