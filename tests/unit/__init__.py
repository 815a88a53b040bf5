"""Unit tests: one module or concept at a time, in this process (mocks allowed)."""
