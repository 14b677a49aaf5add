"""Demo data: the hyperpage-shaped SQLite database that benchmarks, tests and the demo app use."""
