"""The SQL read model: schema, engines, the pure fold of events into rows, one execution's history.

Imports ``shared.infra``, ``shared.log`` and ``shared.domain``."""
