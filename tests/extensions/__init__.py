"""Modules outside ``simlab/`` that add parts to it (an instrument, an analysis, an endpoint kind)
without editing it, as a user's package would; the tests that use them are ``tests/test_extending_*``."""
