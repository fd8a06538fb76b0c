"""Sigma rule engine and coi-watch's own rule packs (rules/packs/)."""
