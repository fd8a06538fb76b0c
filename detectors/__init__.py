"""Built-in detectors: synchronous state machines over events."""
