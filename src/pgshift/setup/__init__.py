"""Getting started: ``pgshift init`` (cutover file + deploy templates) and ``pgshift preflight``."""
