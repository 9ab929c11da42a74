"""Helpers that run real services for the tests (SMTP sink, PostgreSQL, the milter)."""
