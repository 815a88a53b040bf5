"""What operators run: the ``dssync`` command line, verification, workloads and benchmarks."""
