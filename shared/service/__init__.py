"""Running a service: resources opened and closed in order, signals, metrics, maintenance of Redis memory.

The top of ``shared``: may import every layer below it."""
