"""The SQLite side: catalog, storage-class profile, snapshot."""
