"""The command line: thin Typer commands over library calls."""
