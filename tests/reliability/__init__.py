"""Reliability: bad input never crashes upgrader (generated cases, a corpus of nasty ones, secret hygiene)."""
