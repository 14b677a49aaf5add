"""The neutral schema model, the type map and DDL rendering."""
