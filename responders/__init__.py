"""Built-in responders: log, alert, and Incus pause/kill."""
