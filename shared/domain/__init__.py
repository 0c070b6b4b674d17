"""What Orquesta's aggregates are and how commands change them: executions, actions, triggers, work queues,
robots, notifications.

Imports ``shared.infra`` and ``shared.log``."""
