"""``pgshift migrate --into-existing``: load into a schema the application created."""
