"""``dssync verify``: one home's store against its logs (``dssync.appliance.verify``), or two
appliances' stores against each other."""

from __future__ import annotations

from typing import Any

import click

from dssync.appliance.verify import Report, verify_store
from dssync.errors import LockedError, MismatchError
from dssync.tools.control import ControlClient
from dssync.tools.output import emit_json
from dssync.tools.readers import open_config, open_store_reader


def verify_home(home: str, max_diffs: int = 20) -> Report:
    """Verify a home: through its running service if there is one, else read-only."""
    service = ControlClient.for_home(home)
    if service is not None:
        return Report.from_dict(service.verify())
    store = open_store_reader(home)
    if store is None:
        raise LockedError(
            f"the store at {home} is open in another process",
            hint="stop that process (verify needs a consistent view of the store), then run verify again",
        )
    try:
        return verify_store(home, store, max_diffs)
    finally:
        store.close()


def _store_view(home: str) -> tuple[dict[str, Any], list[list[Any]] | None, Any]:
    """Digest of a home's store, from its running service or read-only; plus a rows getter."""
    open_config(home)
    service = ControlClient.for_home(home)
    if service is not None:
        return service.digest(), None, service.rows
    store = open_store_reader(home)
    if store is None:
        raise LockedError(f"the store at {home} is busy and no service answers for it", hint="retry in a moment")
    try:
        d = store.digest()
        rows = [[r[0].hex(), r[1], r[2], r[3], r[4], r[5], (r[8] or b"").hex()] for r in store.rows()]
    finally:
        store.close()
    return {"digest": d.value, "rows": d.rows, "live_bytes": d.live_bytes}, rows, None


def compare_pair(home: str, peer_home: str, max_diffs: int = 20) -> dict[str, Any]:
    """Whether two appliances' stores are identical, and which references differ if not."""
    a, rows_a, get_a = _store_view(home)
    b, rows_b, get_b = _store_view(peer_home)
    doc: dict[str, Any] = {"identical": a["digest"] == b["digest"], "digests": [a["digest"], b["digest"]],
                           "rows": [a["rows"], b["rows"]], "differing_refs": []}
    if not doc["identical"]:
        ra = {r[0]: r[1:] for r in (rows_a if rows_a is not None else get_a())}
        rb = {r[0]: r[1:] for r in (rows_b if rows_b is not None else get_b())}
        for ref in sorted(set(ra) | set(rb)):
            if ra.get(ref) != rb.get(ref):
                where = "only in first" if ref not in rb else "only in second" if ref not in ra else "differs"
                doc["differing_refs"].append(f"{ref} ({where})")
                if len(doc["differing_refs"]) >= max_diffs:
                    break
    return doc


@click.command("verify")
@click.argument("home", type=click.Path(file_okay=False, path_type=str))
@click.argument("peer_home", required=False, type=click.Path(file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True)
def verify_cmd(home: str, peer_home: str | None, as_json: bool) -> None:
    """Check log integrity, segment bytes, and that the store equals the log's projection;
    with PEER_HOME, check instead that the two appliances' stores are identical.

    Exits 0 when everything checks out, 9 with the differences otherwise.

    \b
    Example:
      dssync verify /var/lib/dssync/sh1
      dssync verify /var/lib/dssync/sh1 /var/lib/dssync/sh2
    """
    if peer_home is not None:
        pair = compare_pair(home, peer_home)
        if as_json:
            emit_json(pair)
        else:
            d, n = pair["digests"], pair["rows"]
            click.echo(f"digests {d[0]} / {d[1]} ({n[0]} / {n[1]} rows)")
            for r in pair["differing_refs"]:
                click.echo(f"  {r}")
            click.echo("stores identical" if pair["identical"] else "stores DIFFER")
        if not pair["identical"]:
            raise MismatchError(f"the stores of {home} and {peer_home} differ",
                                hint="let sync catch up (dssync status), then verify again")
        return
    rep = verify_home(home)
    if as_json:
        emit_json(rep.as_dict())
    else:
        click.echo(f"log: {rep.log_batches} batches, {rep.log_records} records ({rep.events})")
        click.echo(f"segments: {rep.segments_checked} checked against their references; higher references: "
                   f"{rep.groups_checked} checked against their children")
        if rep.apply_lag:
            click.echo(f"store is {rep.apply_lag} records behind the log (caught up when the home is next opened)")
        click.echo(f"store digest {rep.store_digest}; projection {rep.projection_digest}")
        for p in rep.problems:
            click.echo(f"problem: {p}")
        for r in rep.differing_refs:
            click.echo(f"  {r}")
        click.echo("verify: OK" if rep.ok else "verify: FAILED")
    if not rep.ok:
        raise MismatchError(f"verify found {len(rep.problems)} problem(s) in {home}", hint=_hint(rep, home))


def _hint(rep: Report, home: str) -> str:
    """The remedy the report names (``dssync.appliance.verify``), as a command on ``home``."""
    if rep.remedy == "recover":
        return (f"cut the damage and take back from the peer what it holds with 'dssync recover {home}' "
                "(with the service stopped), then verify again")
    return f"rebuild the store from the log with 'dssync replay {home}'"
