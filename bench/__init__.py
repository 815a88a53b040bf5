"""Benchmarks, the demo and what drives them: a local pair of real processes, synthetic workloads.

``dssync bench`` and ``dssync demo`` (``dssync.tools.bench_cmd``, ``dssync.bench.demo``) run them;
each benchmark runs the system and its baseline side by side in one run.
"""
