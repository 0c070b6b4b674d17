"""Triggers: their definitions, cron schedules, and firing one into an admitted execution."""
