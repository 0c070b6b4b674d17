"""Fault drills: real ``orq`` processes under kill -9, SIGTERM, Redis and MariaDB outages (issue 11).

Each drill checks what a user relies on (tests/drills/ledger.py): every accepted execution ends exactly once,
cancelled runs never complete, a step runs twice only across a real crash, slots and work entries are
released, and the SQL projection equals the log. Drills that take a server down start a private one
(tests/drills/servers.py); the shared Redis and MariaDB are never stopped.
"""
