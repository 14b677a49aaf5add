"""Prove SQLite and PostgreSQL hold the same data."""
