"""`matterfab lag`: how far behind every consumer group is, per topic and partition.

Groups of the pipeline are `matterfab-allocator`, `matterfab-signer`, `matterfab-builder`,
`matterfab-assembler` and `matterfab-station-<line>`; other groups on the cluster are listed too.
Lag of a partition = log-end offset - committed offset (the whole log when never committed).
Each group's members follow its lag (`<group> · members (<state>): …`, static ids first): for
a station group, the stations of the line the broker holds, departed ones included until they
are removed (docs/stations.md).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from matterfab import config, kafka
from matterfab.cli.failures import fail

console = Console()


async def read_lag(group: str | None = None) -> dict[str, list[kafka.PartitionLag]]:
    """Per-partition lag of every group (or only `group`), by group name in sorted order."""
    settings = config.load_kafka_settings()
    groups = [group] if group else await kafka.list_groups(settings)
    return {g: await kafka.group_lag(settings, g) for g in groups}


async def read_members(groups: list[str]) -> dict[str, kafka.GroupState]:
    """Each group's state and members, as the group coordinator sees them."""
    settings = config.load_kafka_settings()
    async with kafka.admin(settings) as client:
        return {g: await kafka.describe_group(client, g) for g in groups}


def members_json(state: kafka.GroupState | None) -> dict[str, Any]:
    """A group's state and members for `--json` (empty when not read)."""
    if state is None:
        return {}
    return {
        "state": state.state,
        "members": [
            {
                "instance_id": m.instance_id,
                "client_id": m.client_id,
                "host": m.host,
                "member_id": m.member_id,
            }
            for m in state.members
        ],
    }


def members_line(state: kafka.GroupState) -> str:
    """`<group> · members (<state>): name (client, host), …` or `… · no members (<state>)`."""
    if not state.members:
        return f"[bold]{state.group}[/] · no members ({state.state})"
    names = [
        f"{m.name} ({m.client_id}, {m.host.lstrip('/')})"
        for m in sorted(state.members, key=lambda m: (m.instance_id is None, m.name))
    ]
    return f"[bold]{state.group}[/] · members ({state.state}): {', '.join(names)}"


def lag_json(
    lags: dict[str, list[kafka.PartitionLag]],
    members: dict[str, kafka.GroupState] | None = None,
) -> dict[str, Any]:
    """The `--json` document: groups with their total and per-partition lag (and members)."""
    members = members or {}
    return {
        "groups": [
            {
                "group": group,
                **members_json(members.get(group)),
                "lag": sum(r.lag for r in rows),
                "partitions": [
                    {
                        "topic": r.topic,
                        "partition": r.partition,
                        "committed": r.committed,
                        "end": r.end,
                        "lag": r.lag,
                    }
                    for r in rows
                ],
            }
            for group, rows in lags.items()
        ]
    }


def lag_tables(
    lags: dict[str, list[kafka.PartitionLag]],
    members: dict[str, kafka.GroupState] | None = None,
) -> list[tuple[str, Table | None]]:
    """One (heading, table) per group and topic; the table lists partition, committed, end, lag.

    Headings are printed above the tables, not as their titles, so they never wrap to the
    table's width: scripts and people grep for `<group> · <topic> · lag <n>`.
    """
    out: list[tuple[str, Table | None]] = []
    members = members or {}
    for group, rows in lags.items():
        if not rows:
            out.append((f"[bold]{group}[/]: no committed offsets", None))
        if group in members:
            out.append((members_line(members[group]), None))
        if not rows:
            continue
        by_topic: dict[str, list[kafka.PartitionLag]] = defaultdict(list)
        for row in rows:
            by_topic[row.topic].append(row)
        for topic, parts in sorted(by_topic.items()):
            total = sum(p.lag for p in parts)
            colour = "green" if total == 0 else "yellow"
            table = Table()
            table.add_column("partition", justify="right")
            table.add_column("committed", justify="right")
            table.add_column("end", justify="right")
            table.add_column("lag", justify="right")
            for p in parts:
                committed = "-" if p.committed is None else str(p.committed)
                lag = f"[yellow]{p.lag}[/]" if p.lag else "0"
                table.add_row(str(p.partition), committed, str(p.end), lag)
            out.append((f"[bold]{group}[/] · {topic} · lag [{colour}]{total}[/]", table))
    return out


def lag(
    group: Annotated[
        str | None, typer.Option("--group", "-g", help="Only this consumer group.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show consumer-group lag per topic and partition (committed, end, lag)."""
    try:
        lags = asyncio.run(read_lag(group))
        members = asyncio.run(read_members(list(lags))) if lags else {}
    except Exception as exc:  # broker unreachable: say so in one line, not a traceback
        raise fail(exc) from exc
    if as_json:
        typer.echo(json.dumps(lag_json(lags, members), indent=2))
        return
    if not lags:
        console.print("no consumer groups")
        return
    for heading, table in lag_tables(lags, members):
        console.print(heading, soft_wrap=True)
        if table is not None:
            console.print(table)
