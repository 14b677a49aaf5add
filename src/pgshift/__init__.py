"""pgshift: move a live application from SQLite to PostgreSQL with a blue-green deployment."""

__version__ = "0.1.0"
