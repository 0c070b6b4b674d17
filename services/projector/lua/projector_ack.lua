-- Ack a projector's pending entries of a partition's log up to an id (services/projector/locks.py); loaded
-- after projector_ack_upto.lua. Acking needs no lock: it only drops entries already applied.
-- KEYS[1]: the partition's log. ARGV: group, consumer, ack up to. Result: 1.

ack_upto(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
return 1
