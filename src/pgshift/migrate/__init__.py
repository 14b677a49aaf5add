"""``pgshift migrate``: SQLite -> PostgreSQL, schema and data, exact and resumable.

- ``options``: ``MigrateOptions`` (a snapshot taken by someone else included),
  ``MigrateResult``, option checks
- ``run``: ``migrate()``, the one skeleton of both loads, and the ``LoadPath`` they fill in
- ``fresh``: the load that creates the tables; ``into_existing``: the load into the app's
- ``steps``: the timed ``Steps`` runner (the rollout engine reuses it)
- ``copying``, ``sessions``: the copy step's bookkeeping, loading sessions
"""

from pgshift.migrate.options import DEFAULT_BATCH, MigrateOptions, MigrateResult, TableSummary
from pgshift.migrate.run import migrate
from pgshift.migrate.steps import Steps, StepTiming

__all__ = ["DEFAULT_BATCH", "MigrateOptions", "MigrateResult", "StepTiming", "Steps",
           "TableSummary", "migrate"]
