"""Filters of list endpoints: a query-string value checked against what the listed column can hold.

Every list endpoint answers a bad filter value the same way (a 422 naming the parameter and its choices),
so a client learns the valid values from the error. Whether an empty value means "no filter" stays each
endpoint's documented choice; the page itself is :func:`services.api.pagination.keyset_page`.
"""

from __future__ import annotations

from collections.abc import Collection

from shared.infra.errors import ValidationFailed


def one_of(name: str, value: str, choices: Collection[str]) -> str:
    """``value`` of the ``name`` filter if it is one of ``choices``; otherwise a 422 listing them."""
    if value not in choices:
        raise ValidationFailed(f"{name}: one of {', '.join(choices)}", field=name)
    return value
