"""A Django project's schema: SQLite made by its models, PostgreSQL made by its migrations.

Django runs in subprocesses (its settings are process-global): one builds the
SQLite database and writes rows through the ORM, one runs ``migrate`` against
the test PostgreSQL; ``pgshift migrate --into-existing`` moves the rows; a last
one reads every row back through the ORM on PostgreSQL and inserts new ones
(the sequences must have moved past the loaded ids).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from pgshift.dsn import Dsn
from sqlite_helpers import run_migrate

pytest.importorskip("django")

MODELS = '''
import uuid
from django.db import models


class Customer(models.Model):
    name = models.CharField(max_length=80)
    email = models.EmailField(unique=True)
    active = models.BooleanField(default=True)
    uid = models.UUIDField(default=uuid.uuid4, unique=True)
    meta = models.JSONField(default=dict)
    joined = models.DateTimeField()
    birthday = models.DateField(null=True)


class Order(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="orders")
    total = models.DecimalField(max_digits=10, decimal_places=2)
    weight = models.FloatField(null=True)
    placed_at = models.DateTimeField()
    note = models.TextField(blank=True)
    parent = models.ForeignKey("self", null=True, on_delete=models.SET_NULL)
'''

SETTINGS = '''
import json, os
SECRET_KEY = "test"
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "shop"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {"default": json.loads(os.environ["DJANGO_DB"])}
'''

WRITE = '''
import datetime as dt, decimal, django, json, sys
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
if sys.argv[1] == "seed":
    from shop.models import Customer, Order
    from django.contrib.auth.models import User
    User.objects.create_user("admin", "a@example.com", "pw")
    base = dt.datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=dt.UTC)
    for i in range(60):
        c = Customer.objects.create(
            name=f"Customer {i} 'quoted' \\"x\\"", email=f"c{i}@example.com", active=i % 3 != 0,
            meta={"tier": i % 4, "tags": ["a", "b"][: i % 3], "ratio": i / 7},
            joined=base + dt.timedelta(days=i, microseconds=i),
            birthday=dt.date(1990, 1, 1) + dt.timedelta(days=i * 40) if i % 5 else None)
        prev = None
        for j in range(i % 4):
            prev = Order.objects.create(
                customer=c, total=decimal.Decimal(f"{i}.{j:02d}"), weight=None if j else i * 0.1,
                placed_at=base + dt.timedelta(hours=i * 7 + j), note="n\\u00e9" * j, parent=prev)
    Customer.objects.filter(pk=7).delete()  # gaps in the ids
'''

READ = '''
import datetime as dt, django, json, sys
django.setup()
from shop.models import Customer, Order
out = {
    "customers": [[c.id, c.name, c.email, c.active, str(c.uid), c.meta, c.joined.isoformat(),
                   c.birthday.isoformat() if c.birthday else None]
                  for c in Customer.objects.order_by("id")],
    "orders": [[o.id, o.customer_id, str(o.total), o.weight, o.placed_at.isoformat(), o.note,
                o.parent_id] for o in Order.objects.order_by("id")],
}
if sys.argv[1] == "insert":
    c = Customer.objects.create(name="new", email="new@example.com",
                                joined=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    o = Order.objects.create(customer=c, total="1.00", placed_at=c.joined)
    out["new"] = [c.id, o.id]
print(json.dumps(out))
'''


def _project(root: Path) -> Path:
    (root / "shop" / "migrations").mkdir(parents=True)
    (root / "shop" / "__init__.py").write_text("")
    (root / "shop" / "migrations" / "__init__.py").write_text("")
    (root / "shop" / "models.py").write_text(textwrap.dedent(MODELS))
    (root / "settings.py").write_text(textwrap.dedent(SETTINGS))
    (root / "write.py").write_text(textwrap.dedent(WRITE))
    (root / "read.py").write_text(textwrap.dedent(READ))
    return root


def _django(root: Path, db: dict[str, object], *args: str) -> str:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings", "DJANGO_DB": json.dumps(db),
           "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _pg_settings(dsn: Dsn) -> dict[str, object]:
    p = conninfo_to_dict(dsn.conninfo)
    return {"ENGINE": "django.db.backends.postgresql", "NAME": p["dbname"], "USER": p["user"],
            "PASSWORD": p.get("password", ""), "HOST": p["host"], "PORT": p["port"]}


def test_django_schema_loads_and_the_orm_reads_and_inserts(tmp_path: Path, pg_dsn: Dsn) -> None:
    pytest.importorskip("psycopg")
    root = _project(tmp_path / "proj")
    sqlite_db = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "app.db")}
    _django(root, sqlite_db, "-c", "import django; django.setup(); "
            "from django.core.management import call_command; "
            "call_command('makemigrations', 'shop', verbosity=0)")
    _django(root, sqlite_db, "write.py", "seed")
    expected = json.loads(_django(root, sqlite_db, "read.py", "read"))
    assert len(expected["customers"]) == 59 and len(expected["orders"]) > 50

    pg_db = _pg_settings(pg_dsn)
    _django(root, pg_db, "write.py", "schema")
    # Django's post-migrate signals seeded content types and permissions in
    # PostgreSQL too: --truncate replaces them with the source's (same ids as the
    # rows that reference them in SQLite).
    result = run_migrate(tmp_path / "app.db", pg_dsn, tmp_path / "state", into_existing=True,
                         truncate=True, assume_tz="UTC")
    assert result.rejects == 0 and not result.violations, result.to_dict()
    loaded = {t.name: t.rows for t in result.tables}
    assert loaded["shop_customer"] == 59 and loaded["auth_user"] == 1

    got = json.loads(_django(root, pg_db, "read.py", "insert"))
    assert got["customers"] == expected["customers"]
    assert got["orders"] == expected["orders"]
    top_customer = max(c[0] for c in expected["customers"])
    top_order = max(o[0] for o in expected["orders"])
    assert got["new"] == [top_customer + 1, top_order + 1]
