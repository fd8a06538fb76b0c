"""The ``coi-watch`` command line (typer)."""
