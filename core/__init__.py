"""The ground floor: what every package shares and nothing of the project's own.

- :mod:`core.config`: the typed, frozen config sections and the one strict YAML loader;
- :mod:`core.errors`: the typed errors (ConfigError, DataError, SolverError, ...);
- :mod:`core.cli`: the entry points' one-line ``error: ...`` handling;
- :mod:`core.constants`: numbers the packages must agree on.
- :mod:`core.files`: the one atomic file write (temp file, fsync, ``os.replace``).

``core`` imports no other package of the project (import-linter checks it, see pyproject.toml).
"""
