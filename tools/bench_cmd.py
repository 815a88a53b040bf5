"""``dssync bench``: the benchmarks of dssync.bench, each the system beside its baseline."""

from __future__ import annotations

import click

from dssync.bench.core import bench_core
from dssync.bench.kafka import bench_kafka
from dssync.bench.scale import bench_scale
from dssync.bench.sync import bench_sync


@click.group("bench")
def bench() -> None:
    """Benchmarks: the system and its baseline side by side, in one run."""


bench.add_command(bench_core)
bench.add_command(bench_sync)
bench.add_command(bench_kafka)
bench.add_command(bench_scale)
