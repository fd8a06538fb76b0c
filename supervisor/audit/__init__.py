"""Hash-chained JSONL audit log: writing, verifying, reading and redaction."""
