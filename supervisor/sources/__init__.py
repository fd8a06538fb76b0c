"""Async event sources: each reads one kernel interface and publishes events to the bus."""
