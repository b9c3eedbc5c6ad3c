"""Modules outside the simlab package that use and extend it, as a user's package would."""
