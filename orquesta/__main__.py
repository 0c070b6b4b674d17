"""``python -m orquesta``: the ``orq`` command."""

from orquesta.cli import main

main()
