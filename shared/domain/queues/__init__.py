"""Work queues: their definitions, their items, and claiming items for processing."""
