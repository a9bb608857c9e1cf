"""The SQL tables' common base: the catalog, the job queue and the API keys share one database.

Tables are created when missing, and columns added since a table was created are added to
it (`create_tables`): an upgrade needs no migration step. Such columns carry a server
default, so rows written before them read as if they had been written with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Table, inspect, text
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Session


class TableBase(DeclarativeBase):
    pass


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def rows_changed(session: Session, statement: Any) -> int:
    """Rows an UPDATE or DELETE changed (what a compare-and-set reads)."""
    result: CursorResult[Any] = session.execute(statement)  # type: ignore[assignment]  # DML results are cursor results
    return result.rowcount


def create_tables(connection: Connection, tables: Sequence[Table] | None = None) -> None:
    """Creates the missing tables and adds the missing columns of existing ones."""
    if connection.dialect.name == "postgresql":
        # Workers and API replicas start together; CREATE TABLE's existence check races
        # between them, so schema changes take a cluster-wide lock (until the commit).
        connection.execute(text("SELECT pg_advisory_xact_lock(7450238)"))
    TableBase.metadata.create_all(connection, tables=tables)
    inspector = inspect(connection)
    preparer = connection.dialect.identifier_preparer
    for table in tables or TableBase.metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if column.server_default is None:
                raise RuntimeError(f"column {table.name}.{column.name} was added without a server default")
            ddl_type = column.type.compile(dialect=connection.dialect)
            default = column.server_default.arg.text  # type: ignore[attr-defined]  # a text() clause
            add = (
                f"ALTER TABLE {preparer.quote(table.name)} ADD COLUMN {preparer.quote(column.name)} "
                f"{ddl_type} NOT NULL DEFAULT {default}"
            )
            try:
                with connection.begin_nested():
                    connection.execute(text(add))
            except OperationalError:
                # SQLite has no lock across processes here: one starting beside this one (serve
                # and a worker) may have added the column first, which is as good.
                if column.name not in {c["name"] for c in inspect(connection).get_columns(table.name)}:
                    raise
