"""Why a projection transaction failed: because of the events it applied (set them aside) or because of the
database (retry the same events later, with backoff).

Getting this wrong either way hurts. Calling an outage "data" sets innocent events aside, one by one, for as
long as the outage lasts; calling bad data "an outage" retries one batch forever and stalls every tenant of
the partition. So the rule is explicit and by exception class and error code, never by message alone:

* **Data** (quarantine candidates): the driver refused the statement itself — a value out of range, a
  constraint, a row too large for the server's packet (:class:`~services.projector.mysql_bulk.RowTooLarge`,
  raised before sending, unless only this older session's limit is too small; see
  :data:`MYSQL_DATA_CODES`), any other server-side statement error; and what
  the fold raises on an event it cannot apply (``TypeError``, ``ValueError``, ``KeyError``, …: the fold is
  pure, so the same event fails the same way every time).
* **Database** (retried): the connection or the server — lost, refused, shut down, busy, locked, out of
  space or memory, read-only, timed out — and privilege or schema problems (a missing table, an unknown
  column) that an operator must fix and that no event caused; plus everything else not listed as data.

A batch is only ever split when its failure is data, and an event is only set aside when it fails *alone*
with a data error, so an outage that starts mid-bisection stops the bisection (and is retried) instead of
quarantining what it touched.
"""

from __future__ import annotations

import sqlite3

import msgspec
from sqlalchemy.exc import DBAPIError, StatementError

from services.projector.mysql_bulk import RowTooLarge

# MySQL/MariaDB server error codes that say nothing about the statement's data: contention, availability,
# resources, interruptions, read-only/failover states, privileges and schema. (Client codes 2000-2999 are all
# connection-level.) A statement over max_allowed_packet also ends as 2013 "Lost connection" — the server
# answers 1153 and drops the connection — which is why MysqlBulk never sends one (RowTooLarge) and re-reads
# the limit on every new connection: a 2013 is then a real outage.
MYSQL_DATABASE_CODES = frozenset({
    1205, 1213, 1614,  # lock wait timeout, deadlock, XA deadlock
    1040, 1053, 1152, 1158, 1159, 1160, 1161, 1927, 4031,  # too many connections, shutdown, network, killed
    1021, 1037, 1038, 1041, 1114, 1135, 1030, 1180, 1181,  # disk/table full, memory, storage engine, commit
    1317, 1969, 3024,  # query interrupted, statement/execution time exceeded
    1290, 1792, 1836, 1047,  # read-only server or transaction, node not ready (Galera)
    1044, 1045, 1142, 1143, 1227, 1046, 1049, 1054, 1146, 1036,  # privileges, unknown db/column/table, read-only table
})
MYSQL_CLIENT_CODES = range(2000, 3000)
# Statement errors that are certainly about the data (documentation; any other server code counts as data too).
MYSQL_DATA_CODES = frozenset({1153, 1264, 1366, 1406, 1048, 1062, 1452, 1644, 3140, 4025})

# SQLite primary result codes of the database, not the statement: busy/locked, memory, read-only, interrupted,
# I/O, corrupt, full, cannot open, protocol, schema changed, not a database.
SQLITE_DATABASE_CODES = frozenset({5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 17, 26})
SQLITE_ERROR = 1
# SQLITE_ERROR covers statement and schema problems alike: a missing table or column is the operator's.
SQLITE_SCHEMA_MESSAGES = ("no such table", "no such column", "has no column named")

# What the pure fold (and rendering rows to SQL) raises on an event it cannot apply.
FOLD_ERRORS: tuple[type[BaseException], ...] = (
    TypeError, ValueError, LookupError, AttributeError, ArithmeticError, RecursionError, msgspec.MsgspecError,
)

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0


def is_data_error(exc: BaseException) -> bool:
    """True when ``exc`` was caused by the events being applied (so they may be set aside), False when the
    database failed (so the same events are retried later)."""
    if isinstance(exc, RowTooLarge):  # unless a newer session would take it (the limit was raised since)
        return not exc.stale_session
    if isinstance(exc, DBAPIError):
        return not exc.connection_invalidated and _driver_error_is_data(exc.orig)
    if isinstance(exc, StatementError):  # a non-driver error while preparing parameters: the values
        return exc.orig is not None and is_data_error(exc.orig)
    if isinstance(exc, OSError | MemoryError):  # network, files; memory is the process's, not one event's
        return False
    return isinstance(exc, FOLD_ERRORS)


def _driver_error_is_data(orig: BaseException | None) -> bool:
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        message = str(orig).lower()
        if code is None:  # raised by the sqlite3 module itself, not by SQLite (e.g. a closed connection)
            return not isinstance(orig, sqlite3.OperationalError | sqlite3.InterfaceError | sqlite3.ProgrammingError)
        if code & 0xFF in SQLITE_DATABASE_CODES:
            return False
        return not (code & 0xFF == SQLITE_ERROR and any(m in message for m in SQLITE_SCHEMA_MESSAGES))
    code = _mysql_code(orig)
    if code is None:  # an interface error without a server code: the connection's state
        return False
    return not (code in MYSQL_DATABASE_CODES or code in MYSQL_CLIENT_CODES)


def _mysql_code(orig: BaseException | None) -> int | None:
    """The MySQL error number of a PyMySQL/aiomysql error (its first argument), if it has one."""
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) and args[0] > 0 else None


def describe(exc: BaseException) -> str:
    """The error as an operator reads it: class and first line of the message (driver noise cut)."""
    if isinstance(exc, DBAPIError | StatementError) and exc.orig is not None:
        exc = exc.orig
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:2000]


def backoff_s(failures: int) -> float:
    """Seconds to wait after ``failures`` consecutive failed attempts (0 = the first): 1, 2, 4, … up to 30."""
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** min(failures, 16))
