"""The store: users, addresses, lists, the message log and feedback (SQLAlchemy).

SQLite (WAL) is the embedded default; PostgreSQL lets several mail nodes share
one store.  Import the submodules you need; this package itself imports nothing
heavy, so ``stronghold.store.errors`` is cheap for the engine.
"""
