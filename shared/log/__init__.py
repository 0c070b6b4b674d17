"""The event log and its Redis plumbing: keys, clients, events, atomic units, the consumer loop, stream reads.

Imports ``shared.infra`` only."""
