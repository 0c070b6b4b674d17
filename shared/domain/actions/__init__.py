"""Step actions: their parameter schemas (checked at save) and how the built-ins run."""
