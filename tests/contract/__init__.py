"""The contract suites: one per interface, subclassed once per backend."""
