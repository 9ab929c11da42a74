"""Errors of the store, shared with the engine's list interface."""


class StoreError(Exception):
    """The database cannot be reached or refused the operation (one-line message)."""


class StoreUnavailable(StoreError):
    """The database did not answer: down, restarting, the connection dropped (worth trying again)."""


class EntryError(ValueError):
    """A list entry or user change is refused; the message says why, for the user."""


class SchemaError(StoreError):
    """The database's schema is not one this release can use or migrate (newer than the code,
    half-migrated, or tables without a revision): nothing is changed, nothing may run on it."""
