"""Alembic environment: the connection is handed in by stronghold.store.db.upgrade()."""

from alembic import context

from stronghold.store.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
