"""The ops modules' pure parts: secret redaction, statement splitting, filter columns."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgshift.errors import UsageError
from pgshift.ops.planned import parse_create_index, split_statements
from pgshift.ops.secrets import REDACTED, redact_config
from pgshift.ops.usage import filter_columns, index_name

SECRET_KEYS = ["DB_PASSWORD", "SECRET_KEY", "API_TOKEN", "stripe_api_key", "AUTH_HEADER",
               "aws_secret_access_key", "JWT_SIGNING_KEY", "KEY"]
PLAIN_KEYS = ["DEBUG", "WORKERS", "LOG_LEVEL", "PORT", "image"]
values = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126,
                                        blacklist_characters="#'\"\\"), min_size=1, max_size=30)


@given(key=st.sampled_from(SECRET_KEYS), value=values,
       form=st.sampled_from(["{k}={v}", "export {k}={v}", "  {k}: {v}", "  - {k}={v}",
                             "{k} = {v}"]))
def test_a_secret_value_never_survives(key: str, value: str, form: str) -> None:
    text = form.format(k=key, v=value) + "\n"
    assert redact_config(text) == (form.format(k=key, v=REDACTED) + "\n", 1)


@given(key=st.sampled_from(PLAIN_KEYS),
       value=st.from_regex(r"[A-Za-z0-9_./-]{1,20}", fullmatch=True),
       form=st.sampled_from(["{k}={v}", "  {k}: {v}", "  - {k}={v}"]))
def test_plain_settings_are_kept_as_they_are(key: str, value: str, form: str) -> None:
    text = form.format(k=key, v=value) + "\n"
    assert redact_config(text) == (text, 0)


def test_passwords_in_urls_anywhere_and_line_endings_kept() -> None:
    text = ("command: worker --db postgresql://u:pw1@h/db\r\n"
            "REDIS=redis://:pw2@cache:6379\n"
            "BROKER: amqp://guest:pw3@mq:5672/vhost\n"
            "HOMEPAGE=https://example.com:8443/a\n")
    assert redact_config(text) == (
        "command: worker --db postgresql://u:***@h/db\r\n"
        "REDIS=redis://:***@cache:6379\n"
        "BROKER: amqp://guest:***@mq:5672/vhost\n"
        "HOMEPAGE=https://example.com:8443/a\n", 3)


def test_split_statements_respects_quotes_comments_and_parentheses() -> None:
    text = ("-- a comment; with a semicolon\n"
            "CREATE INDEX a ON t (x) WHERE note = 'a;b';\n"
            "CREATE INDEX \"b;c\" ON t ((lower(y)))\n;;\n"
            "CREATE INDEX d ON t (z) WHERE s = 'it''s'")
    assert split_statements(text) == [
        "CREATE INDEX a ON t (x) WHERE note = 'a;b'",
        "CREATE INDEX \"b;c\" ON t ((lower(y)))",
        "CREATE INDEX d ON t (z) WHERE s = 'it''s'"]


def test_parse_create_index() -> None:
    p = parse_create_index(
        'CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "Jobs Due" ON app.jobs USING btree '
        "(status, (lower(type))) INCLUDE (priority) WHERE status IN ('pending', 'processing')",
        "public")
    assert (p.name, p.schema, p.table, p.unique, p.using) == ("Jobs Due", "app", "jobs", True,
                                                              "btree")
    assert p.columns == ["status", "(lower(type))"] and p.tail == "INCLUDE (priority)"
    assert p.predicate == "status IN ('pending', 'processing')"
    assert p.definition() == (
        'CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "Jobs Due" ON app.jobs USING btree '
        "(status, (lower(type))) INCLUDE (priority) WHERE status IN ('pending', 'processing')")
    for bad in ("CREATE INDEX ON t (x)", "DROP TABLE t", "CREATE INDEX a ON t (x"):
        with pytest.raises(UsageError):
            parse_create_index(bad, "public")


@pytest.mark.parametrize(("query", "expected"), [
    ("SELECT * FROM jobs WHERE status = $1 AND scheduled_at <= $2 ORDER BY priority",
     {"jobs": ["status", "scheduled_at"]}),
    ("SELECT j.id FROM jobs j JOIN users u ON u.id = j.user_id WHERE u.email = $1 "
     "AND j.type IN ($2, $3)", {"users": ["email"], "jobs": ["type"]}),
    ("UPDATE rate_limits SET remaining = remaining - $1 WHERE key = $2",
     {"rate_limits": ["key"]}),
    ("SELECT * FROM jobs WHERE lower(type) = $1", {}),  # an expression: no plain index helps
    ("SELECT * FROM jobs WHERE created_at > $1 AND updated_at < $2",
     {"jobs": ["created_at"]}),  # one range column only
    ("this is not sql at all (", {}),
])
def test_filter_columns(query: str, expected: dict[str, list[str]]) -> None:
    assert filter_columns(query) == expected


def test_index_name_fits_postgres_identifiers() -> None:
    assert index_name("events", ["account_id"]) == "events_account_id_idx"
    assert len(index_name("t" * 80, ["c" * 80])) <= 63
