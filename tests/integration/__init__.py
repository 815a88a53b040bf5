"""Integration tests: real dssync processes, really killed, on real DuckDB files and logs."""
