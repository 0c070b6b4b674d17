"""The bottom layer: errors, time and ids, settings and plans, bounds, outbound HTTP safety, tracing.

Imports nothing else of ``shared``."""
