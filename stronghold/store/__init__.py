"""The store: every database query of Stronghold (SQLAlchemy), one module per kind of record.

SQLite (WAL) is the embedded default; PostgreSQL lets several mail nodes share
one store.  Import the submodules you need; this package itself imports nothing
heavy, so ``stronghold.store.errors`` is cheap for the engine.  The rest of the
product opens a session and calls these modules; it writes no SQL of its own
(tests/unit/test_layers.py).
"""
