"""``pgshift dashboard``: a small local web page showing a rollout live, with its controls.

- ``live.py``: the sampler (journal read-only, ``verbs.status``, router figures, audit
  trail, the next decision) publishing one snapshot per interval;
- ``page.py``: the server-rendered page (complete without JavaScript), ``assets.py`` its
  inline style and script;
- ``server.py``: the stdlib HTTP server, sign-in, CSRF checks, the operator verbs.

See docs/dashboard.md.
"""

from pgshift.dashboard.server import Dashboard

__all__ = ["Dashboard"]
