"""The demo database's rows: reference data and one deterministic generator per table.

Every value comes from a ``random.Random`` stream per table (seeded from ``(seed, table)``) and
a fixed base epoch, never from the wall clock, so the same ``(scale, seed)`` always gives the
same rows. :func:`_batches` yields them in foreign-key-safe insertion order, in batches of
``_BATCH`` rows; :mod:`pgshift.demo.seed_build` stores them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Iterator
from itertools import combinations, islice
from typing import Any

from pgshift.errors import UsageError

__all__ = ["BASE_EPOCH_MS", "Row", "row_counts"]

# 2024-01-01T00:00:00Z. Every timestamp is this plus an offset so content never depends on "now".
BASE_EPOCH_MS = 1_704_067_200_000
_MINUTE_MS = 60_000
_HOUR_MS = 3_600_000
_DAY_MS = 86_400_000
# Jobs are spread over this window after BASE_EPOCH_MS; its end is the dataset's notional "now".
_JOB_SPAN_MS = 180 * _DAY_MS
_NOW_MS = BASE_EPOCH_MS + _JOB_SPAN_MS

# One encoder for millions of rows: json.dumps(**kwargs) would build a new encoder per call.
_dumps = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), check_circular=False, allow_nan=False
).encode

# Rows generated per batch (and per pickle when a child generates them).
_BATCH = 10_000

Row = tuple[Any, ...]


# --------------------------------------------------------------------------- reference data

_TOOLS: tuple[str, ...] = (
    "github",
    "gitlab",
    "jira",
    "confluence",
    "slack",
    "linear",
    "notion",
    "sentry",
    "datadog",
    "pagerduty",
    "opsgenie",
    "circleci",
)
_OAUTH_PROVIDERS: tuple[str, ...] = (
    "github",
    "gitlab",
    "jira",
    "slack",
    "linear",
    "notion",
    "confluence",
    "sentry",
)
_OAUTH_SCOPES: dict[str, str] = {
    "github": "repo read:org read:user",
    "gitlab": "read_api read_repository",
    "jira": "read:jira-work read:jira-user offline_access",
    "slack": "channels:read chat:write users:read",
    "linear": "read",
    "notion": "read_content",
    "confluence": "read:confluence-content.summary offline_access",
    "sentry": "project:read event:read org:read",
}

# (job type, payload key naming what it works on, weight). The type already names the tool, so
# payloads stay lean: at 1M jobs every payload byte is a megabyte of file.
_JOB_TYPES: tuple[tuple[str, str, int], ...] = (
    ("sync_github", "repo", 20),
    ("sync_gitlab", "project", 8),
    ("refresh_jira", "project", 15),
    ("refresh_confluence", "space", 6),
    ("send_digest", "channel", 10),
    ("sync_linear", "team", 7),
    ("import_notion", "database", 5),
    ("poll_sentry", "project", 9),
    ("collect_datadog_metrics", "monitor", 8),
    ("page_oncall", "service", 3),
    ("rebuild_search_index", "index", 4),
    ("cleanup_sessions", "scope", 5),
)

_STATUSES: tuple[str, ...] = ("completed", "failed", "pending", "processing", "cancelled")
# Old jobs are settled (a few stuck ones stay pending/processing); the newest 2% are the live
# queue the dashboard polls, so idx_jobs_status_scheduled sees a realistic spread.
_SETTLED_WEIGHTS: tuple[int, ...] = (86, 7, 2, 1, 4)
_RECENT_WEIGHTS: tuple[int, ...] = (35, 4, 40, 18, 3)
_RECENT_SHARE = 50  # the newest 1/50 of the jobs

_ORGS = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "piedpiper")
_NAMES = (
    "api", "web", "infra", "mobile", "billing", "search", "auth", "docs", "data", "ops",
    "platform", "design", "growth", "ml", "edge", "core",
)  # fmt: skip
_TAGS = ("nightly", "manual", "webhook", "retry", "backfill", "urgent", "team:core", "p1", "beta")
_LOCALES = ("en-US", "fr-FR", "de-DE", "ja-JP", "pt-BR", "es-ES")
# Occasional non-ASCII payload text: the copy path must carry it byte for byte.
_NOTES = (
    "café au lait ☕",
    "日本チームの同期",
    "déploiement terminé ✅",
    "Grüße aus München",
    "🚀 launch week",
    "naïve façade — résumé",
    "Привет, мир",
    "emoji 👍🏽 with skin tone",
)

_FIRST = (
    ("Alice", "alice"), ("Bob", "bob"), ("José", "jose"), ("Zoë", "zoe"),
    ("Łukasz", "lukasz"), ("Søren", "soren"), ("Chloé", "chloe"), ("François", "francois"),
    ("Ольга", "olga"), ("太郎", "taro"), ("Priya", "priya"), ("Nguyễn", "nguyen"),
    ("Mia", "mia"), ("Omar", "omar"), ("Ana", "ana"), ("Kenji", "kenji"),
    ("Fatima", "fatima"), ("Liam", "liam"), ("Ingrid", "ingrid"), ("Mateo", "mateo"),
)  # fmt: skip
_LAST = (
    ("Smith", "smith"), ("Müller", "muller"), ("García", "garcia"), ("Dupont", "dupont"),
    ("山田", "yamada"), ("Kowalski", "kowalski"), ("O'Brien", "obrien"), ("Björk", "bjork"),
    ("Rossi", "rossi"), ("Chen", "chen"), ("Ivanova", "ivanova"), ("Santos", "santos"),
    ("Johansson", "johansson"), ("Núñez", "nunez"), ("Patel", "patel"), ("Kim", "kim"),
)  # fmt: skip
_DOMAINS = ("example.com", "example.org", "acme.test", "globex.test", "mail.example.net")

_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.2 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.144 Mobile Safari/537.36",
    "curl/8.5.0",
    "hyperpage-cli/1.4.2 (linux; x64)",
)

# Error texts deliberately carry tab, newline, CR, backslash and both quotes: the copy path must
# move them exactly, and an exporter that forgets to escape one of them breaks on these rows.
_ERRORS: tuple[tuple[str, str], ...] = (
    ("HTTP_502", 'upstream "api.github.com" returned 502 Bad Gateway'),
    ("HTTP_429", "rate limited\nretry-after: 30"),
    ("TIMEOUT", "request timed out after 30000 ms"),
    ("PARSE", "unexpected token at line 3\tcolumn 17"),
    ("IO", "cannot write C:\\hyperpage\\cache\\sync.tmp"),
    ("AUTH", "token for 'jira' expired; re-authorise in Settings → Integrations"),
    ("CRLF", "multi-line response:\r\n  status=500\r\n  body=<empty>"),
    ("UNICODE", "échec de la synchronisation — ユーザーが見つかりません"),
)


def _weighted(items: tuple[Any, ...], weights: tuple[int, ...], size: int = 1000) -> tuple:
    """A lookup table so that ``table[int(r() * len(table))]`` draws with the given weights."""
    total = sum(weights)
    table: list[Any] = []
    for item, weight in zip(items, weights, strict=True):
        table.extend([item] * round(weight * size / total))
    return tuple(table)


_SETTLED_TABLE = _weighted(_STATUSES, _SETTLED_WEIGHTS)
_RECENT_TABLE = _weighted(_STATUSES, _RECENT_WEIGHTS)


def row_counts(scale: int) -> dict[str, int]:
    """Rows per table (in ``TABLES`` order) that :func:`seed` writes for ``scale`` jobs."""
    _check_scale(scale)
    return {
        "users": max(1, scale // 20),
        "user_sessions": max(1, scale // 10),
        "jobs": scale,
        "job_history": scale,
        "tool_configs": min(len(_TOOLS), scale),
        "rate_limits": max(1, scale // 100),
        "app_state": min(len(_APP_STATE_KEYS), scale),
        "oauth_tokens": max(1, scale // 20),
    }


def _check_scale(scale: int) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise UsageError(
            f"scale must be an integer >= 1, got {scale!r}",
            hint="pgshift demo seed PATH --scale 10000",
            operation="seed",
        )


def _batches(seed_value: int, scale: int) -> Iterator[tuple[str, list[Row]]]:
    """(table, rows) batches of every table, in FK-safe insertion order."""
    counts = row_counts(scale)
    n_users = counts["users"]
    yield from _chunked("users", _users(_rng(seed_value, "users"), n_users))
    yield from _chunked(
        "user_sessions",
        _sessions(_rng(seed_value, "user_sessions"), counts["user_sessions"], n_users),
    )
    for jobs, history in _job_batches(_rng(seed_value, "jobs"), scale, n_users):
        yield "jobs", jobs
        yield "job_history", history
    yield from _chunked(
        "tool_configs", _tool_configs(_rng(seed_value, "tool_configs"), counts["tool_configs"])
    )
    yield from _chunked(
        "rate_limits", _rate_limits(_rng(seed_value, "rate_limits"), counts["rate_limits"])
    )
    yield from _chunked(
        "app_state", _app_state(_rng(seed_value, "app_state"), counts["app_state"], scale)
    )
    yield from _chunked(
        "oauth_tokens",
        _oauth_tokens(_rng(seed_value, "oauth_tokens"), counts["oauth_tokens"], n_users),
    )


def _chunked(table: str, rows: Iterable[Row]) -> Iterator[tuple[str, list[Row]]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, _BATCH)):
        yield table, batch


def _rng(seed_value: int, table: str) -> random.Random:
    # One stream per table: a change in one table's generator leaves the others' content alone.
    # str seeds go through SHA-512, so this does not depend on PYTHONHASHSEED.
    return random.Random(f"pgshift-demo:{seed_value}:{table}")


# The variant nibble of a v4 UUID keeps its low two bits and gets "10" on top.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _uuid4(bits: int) -> str:
    """``str(uuid.UUID(int=bits, version=4))`` without building the object (3x faster)."""
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


# --------------------------------------------------------------------------- generators


def _users(rng: random.Random, n: int) -> Iterator[tuple[Any, ...]]:
    r = rng.random
    for uid in range(1, n + 1):
        first, first_slug = _FIRST[int(r() * len(_FIRST))]
        last, last_slug = _LAST[int(r() * len(_LAST))]
        # The id keeps emails unique without a lookup; drizzle apps lower-case emails.
        email = f"{first_slug}.{last_slug}{uid}@{_DOMAINS[int(r() * len(_DOMAINS))]}"
        x = r()
        name = None if x < 0.05 else (f"{first} {last} 🚀" if x < 0.07 else f"{first} {last}")
        created = BASE_EPOCH_MS - 365 * _DAY_MS + int(r() * 365 * _DAY_MS)
        updated = created + int(r() * (_NOW_MS - created))
        yield (uid, email, name, 1 if r() < 0.02 else 0, created, updated)


def _ip(r: Callable[[], float]) -> str:
    if r() < 0.7:
        return f"{int(r() * 223) + 1}.{int(r() * 256)}.{int(r() * 256)}.{int(r() * 254) + 1}"
    return (
        f"2001:db8:{int(r() * 65536):x}:{int(r() * 65536):x}:"
        f"{int(r() * 65536):x}::{int(r() * 65535) + 1:x}"
    )


def _sessions(rng: random.Random, n: int, n_users: int) -> Iterator[tuple[Any, ...]]:
    r, bits = rng.random, rng.getrandbits
    for _ in range(n):
        created = BASE_EPOCH_MS + int(r() * _JOB_SPAN_MS)
        yield (
            _uuid4(bits(128)),
            int(r() * n_users) + 1,
            None if r() < 0.03 else _USER_AGENTS[int(r() * len(_USER_AGENTS))],
            None if r() < 0.02 else _ip(r),
            created,
            created + 30 * _DAY_MS,
        )


# Payloads are assembled from fragments that json encoded once at import time: escaping stays
# json's job, and building a payload costs an f-string instead of a 3 us encoder call.
_TARGETS_JSON: tuple[str, ...] = tuple(_dumps(f"{o}/{n}") for o in _ORGS for n in _NAMES)
_TAG_SETS_JSON: tuple[str, ...] = tuple(
    _dumps(list(combo)) for k in (1, 1, 2) for combo in combinations(_TAGS, k)
)
_NOTES_JSON: tuple[str, ...] = tuple(_dumps(note) for note in _NOTES)
_LOCALES_JSON: tuple[str, ...] = tuple(_dumps(locale) for locale in _LOCALES)
_ERRORS_JSON: tuple[str, ...] = tuple(
    _dumps({"code": code, "message": message}) for code, message in _ERRORS
)
# (job type, payload opening up to the target value, whether the payload carries a locale)
_JOB_SHAPES: tuple[tuple[str, str, bool], ...] = tuple(
    (job_type, f"{{{_dumps(key)}:", job_type == "send_digest")
    for job_type, key, _weight in _JOB_TYPES
)
_SHAPE_TABLE = _weighted(_JOB_SHAPES, tuple(t[2] for t in _JOB_TYPES))

# The last k entries of each lifecycle become a job's k history rows (k = 0..3). Each entry is
# (status, message, point in the job's timeline: 0 created, 1 started, 2 finished/updated).
_LIFECYCLES: dict[str, tuple[tuple[str, str, int], ...]] = {
    "pending": (
        ("pending", "created", 0),
        ("pending", "rescheduled by scheduler", 0),
        ("pending", "queued", 2),
    ),
    "processing": (
        ("pending", "queued", 0),
        ("processing", "picked up by worker", 1),
        ("processing", "progress 50%", 2),
    ),
    "completed": (
        ("pending", "queued", 0),
        ("processing", "picked up by worker", 1),
        ("completed", "done", 2),
    ),
    "failed": (
        ("processing", "picked up by worker", 1),
        ("failed", "attempt failed, retrying", 1),
        ("failed", "giving up", 2),
    ),
    "cancelled": (
        ("pending", "queued", 0),
        ("pending", "rescheduled by scheduler", 0),
        ("cancelled", "cancelled by user", 2),
    ),
}
# Precomputed tails: _TAILS[status][k] is the k-entry history of a job in that status.
_TAILS: dict[str, tuple[tuple[tuple[str, str, int], ...], ...]] = {
    status: tuple(steps[3 - k :] if k else () for k in range(4))
    for status, steps in _LIFECYCLES.items()
}

# History rows per job come in blocks of 4 jobs summing to 4, so the total is exactly N while
# individual jobs get 0..3 rows.
_HISTORY_BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 1, 1, 1),
    (1, 1, 1, 1),
    (0, 1, 1, 2),
    (2, 1, 0, 1),
    (0, 2, 0, 2),
    (0, 0, 1, 3),
    (3, 0, 0, 1),
    (1, 2, 1, 0),
)


def _job_batches(
    rng: random.Random, n: int, n_users: int
) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """Yield (job rows, their history rows) per batch of _BATCH jobs, in creation order.

    One long function on purpose: it runs a million times, and local names are the cheapest.
    """
    r, bits = rng.random, rng.getrandbits
    shapes, n_shapes = _SHAPE_TABLE, len(_SHAPE_TABLE)
    settled, recent = _SETTLED_TABLE, _RECENT_TABLE
    recent_from = n - max(1, n // _RECENT_SHARE)
    targets, n_targets = _TARGETS_JSON, len(_TARGETS_JSON)
    tag_sets, n_tag_sets = _TAG_SETS_JSON, len(_TAG_SETS_JSON)
    errors, n_errors = _ERRORS_JSON, len(_ERRORS)
    tails, blocks, n_blocks = _TAILS, _HISTORY_BLOCKS, len(_HISTORY_BLOCKS)
    step = _JOB_SPAN_MS / n
    tail_start = n - n % 4
    block: tuple[int, int, int, int] = (1, 1, 1, 1)
    history_id = 0
    jobs: list[tuple[Any, ...]] = []
    history: list[tuple[Any, ...]] = []
    for i in range(n):
        job_id = _uuid4(bits(128))
        job_type, opening, has_locale = shapes[int(r() * n_shapes)]
        statuses = settled if i < recent_from else recent
        status = statuses[int(r() * len(statuses))]
        # Creation time grows with rowid, like an app inserting over six months.
        created = BASE_EPOCH_MS + int(i * step) + int(r() * 1000)
        uid = None if r() < 0.2 else int(r() * n_users) + 1
        x = r()
        priority = 0 if x < 0.7 else int(x * 1000) % 10 + 1
        max_attempts = 5 if r() < 0.1 else 3
        scheduled = created if r() < 0.6 else created + int(r() * 2 * _HOUR_MS)
        started = completed = result = None
        attempts = 0
        if status == "pending":
            updated = created
        elif status == "cancelled":
            updated = scheduled + int(r() * _HOUR_MS)
        else:
            started = scheduled + int(r() * 5 * _MINUTE_MS)
            if status == "processing":
                attempts = 1
                updated = started + int(r() * _MINUTE_MS)
            else:
                completed = updated = started + 50 + int(r() * r() * 10 * _MINUTE_MS)
                if status == "completed":
                    attempts = 1 if r() < 0.9 else 2
                    result = f'{{"ok":true,"items":{int(r() * 500)},"ms":{completed - started}}}'
                else:
                    attempts = max_attempts
                    result = (
                        f'{{"ok":false,"error":{errors[int(r() * n_errors)]},'
                        f'"attempts":{attempts}}}'
                    )
        x = r()
        if has_locale:
            extra = f',"locale":{_LOCALES_JSON[int(x * 1000) % len(_LOCALES_JSON)]}'
        elif x < 0.08:
            extra = f',"note":{_NOTES_JSON[int(x * 1000) % len(_NOTES_JSON)]}'
        else:
            extra = ""
        payload = (
            f"{opening}{targets[int(r() * n_targets)]},"
            f'"opts":{{"full":{"true" if r() < 0.1 else "false"},'
            f'"limit":{(50, 100, 200)[int(r() * 3)]}}},'
            f'"tags":{tag_sets[int(r() * n_tag_sets)]}{extra}}}'
        )
        jobs.append(
            (
                job_id,
                job_type,
                status,
                priority,
                payload,
                result,
                attempts,
                max_attempts,
                uid,
                scheduled,
                started,
                completed,
                created,
                updated,
            )
        )

        if i & 3 == 0:
            block = blocks[int(r() * n_blocks)] if i < tail_start else (1, 1, 1, 1)
        k = block[i & 3]
        if k:
            points = (created, scheduled if started is None else started, updated)
            for h_status, message, point in tails[status][k]:
                history_id += 1
                text: str | None = message
                if h_status == "failed" and point == 1:
                    # The raw error text, special characters included.
                    text = f"{message}: {_ERRORS[int(r() * n_errors)][1]}"
                else:
                    x = r()
                    if x < 0.03:
                        text = None
                    elif x < 0.05:
                        text = f'{message}\tworker="w-{int(x * 1000) % 8}"\\n'
                history.append((history_id, job_id, h_status, text, points[point]))

        if len(jobs) == _BATCH:
            yield jobs, history
            jobs, history = [], []
    if jobs:
        yield jobs, history


def _tool_configs(rng: random.Random, n: int) -> Iterator[tuple[Any, ...]]:
    r = rng.random
    for tool in _TOOLS[:n]:
        config = {
            "baseUrl": f"https://{tool}.example.com/api",
            "orgs": [_ORGS[int(r() * len(_ORGS))] for _ in range(int(r() * 3) + 1)],
            "filters": {"includeArchived": r() < 0.2, "labels": ["team:core", "p1"]},
            "displayName": f"{tool.capitalize()} — équipe",
        }
        yield (
            tool,
            0 if r() < 0.15 else 1,
            _dumps(config),
            (60_000, 300_000, 900_000)[int(r() * 3)],
            0 if r() < 0.25 else 1,
            BASE_EPOCH_MS + int(r() * _JOB_SPAN_MS),
        )


def _rate_limits(rng: random.Random, n: int) -> Iterator[tuple[Any, ...]]:
    r = rng.random
    kinds = ("user", "token", "ip", "org")
    limits = (60, 1000, 5000, 15000)
    for i in range(n):
        tool = _TOOLS[int(r() * len(_TOOLS))]
        limit = limits[int(r() * len(limits))]
        updated = BASE_EPOCH_MS + int(r() * _JOB_SPAN_MS)
        # The counter suffix keeps keys unique without tracking them.
        yield (
            f"{tool}:{kinds[int(r() * len(kinds))]}:{i + 1}",
            int(r() * (limit + 1)),
            limit,
            updated + int(r() * _HOUR_MS),
            updated,
        )


_APP_STATE_KEYS: tuple[str, ...] = (
    "schema_version",
    "feature_flags",
    "maintenance_mode",
    "dashboard_layout",
    "last_digest_sent",
    "scheduler_cursor",
    "onboarding",
    "announcement",
    "theme",
    "cache_stats",
)


def _app_state(rng: random.Random, n: int, scale: int) -> Iterator[tuple[Any, ...]]:
    r = rng.random
    values: dict[str, Any] = {
        "schema_version": {"version": 14, "migratedAt": BASE_EPOCH_MS},
        "feature_flags": {"newDashboard": True, "aiSummaries": False, "betaTools": ["linear"]},
        "maintenance_mode": {"enabled": False, "message": None},
        "dashboard_layout": {"columns": 3, "widgets": ["jobs", "alerts", "prs", "incidents"]},
        "last_digest_sent": {"at": _NOW_MS - _DAY_MS, "recipients": max(1, scale // 20)},
        "scheduler_cursor": {"lastJobCreatedAt": _NOW_MS, "lag": int(r() * 1000)},
        "onboarding": {"completed": ["connect_github", "invite_team"], "skipped": []},
        "announcement": {"text": "Nouveautés : tableau de bord « temps réel » 🎉", "level": "info"},
        "theme": "dark",
        "cache_stats": {"hits": int(r() * 10**6), "misses": int(r() * 10**4), "ratio": 0.98},
    }
    for key in _APP_STATE_KEYS[:n]:
        yield (key, _dumps(values[key]), BASE_EPOCH_MS + int(r() * _JOB_SPAN_MS))


def _oauth_tokens(rng: random.Random, n: int, n_users: int) -> Iterator[tuple[Any, ...]]:
    r, bits = rng.random, rng.getrandbits
    providers = len(_OAUTH_PROVIDERS)
    # Distinct (user, provider) slots, sorted so rows come out grouped per user.
    slots = sorted(rng.sample(range(n_users * providers), n))
    for token_id, slot in enumerate(slots, start=1):
        user_id, provider = slot // providers + 1, _OAUTH_PROVIDERS[slot % providers]
        created = BASE_EPOCH_MS + int(r() * _JOB_SPAN_MS)
        updated = created + int(r() * (_NOW_MS - created))
        yield (
            token_id,
            user_id,
            provider,
            f"{bits(160):040x}",
            None if r() < 0.3 else f"{bits(160):040x}",
            None if r() < 0.2 else updated + 8 * _HOUR_MS,
            None if r() < 0.1 else _OAUTH_SCOPES[provider],
            created,
            updated,
        )
