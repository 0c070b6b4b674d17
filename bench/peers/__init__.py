"""Other systems measured beside Orquesta in the same ``make bench`` run, on the same Redis server.

Each peer suite returns the rows that Orquesta's rows name as their ``peer``; the table prints the ratios.
"""
