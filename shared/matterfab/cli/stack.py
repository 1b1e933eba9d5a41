"""`matterfab up | down | status` (the local stack) and `matterfab topics apply` (any Kafka).

The local stack (`matterfab.localstack`, the `local` extra) is imported only by the commands
that run it, so `matterfab serve` and every other command work in an image without it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from matterfab.cli.failures import fail
from matterfab.config import load_kafka_settings, state_dir
from matterfab.errors import DependencyError, StackError
from matterfab.services import registry
from matterfab.topics import apply_topics, load_topics

if TYPE_CHECKING:
    from matterfab.localstack import LocalStack

# Services `up` runs in the background, in pipeline order (stations run on the line, not here).
SERVICES = [s.name for s in registry.SERVICES.values() if s.up]
SETTLE_S = 1.5  # how long `up` watches new services for an immediate crash

console = Console()
err_console = Console(stderr=True)


def service_available(name: str) -> bool:
    """Whether `matterfab.services.<name>.main` exists (so `serve <name>` can run it)."""
    try:
        return importlib.util.find_spec(registry.SERVICES[name].module) is not None
    except ModuleNotFoundError:
        return False


def metrics_env(name: str) -> dict[str, str]:
    """The variable giving service `name` its default metrics port (a default: the stack
    passes it only where the variable is not already set)."""
    service = registry.SERVICES.get(name)
    if service is None:
        return {}
    return {service.metrics_port_env: str(service.metrics_port)}


def local_stack() -> LocalStack:
    """The local stack of the state folder ($MATTERFAB_HOME, else ./.matterfab)."""
    try:
        from matterfab.localstack import LocalStack
    except ImportError as exc:  # an install without the `local` extra (the service image)
        raise StackError(
            f"the local stack is not installed ({exc}): pip install 'matterfab[local]'"
        ) from None
    return LocalStack(state_dir())


def service_argv(name: str) -> list[str]:
    """The command line that runs service `name` in the background."""
    return [sys.executable, "-m", "matterfab.cli.main", "serve", name]


def _fail(exc: Exception) -> typer.Exit:
    # `up` may quote a process's log tail: print it whole; anything else is one line.
    if isinstance(exc, DependencyError) or "\n" not in str(exc):
        return fail(exc)
    err_console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(1)


def _status_table(stack: LocalStack) -> Table:
    status = stack.status()
    table = Table(title=f"matterfab local stack ({status['home']})", title_justify="left")
    table.add_column("component")
    table.add_column("pid", justify="right")
    table.add_column("address / log")

    def pid_cell(pid: int | None) -> str:
        return str(pid) if pid else "[red]stopped[/]"

    table.add_row("kafka", pid_cell(status["kafka"]["pid"]), status["kafka"]["bootstrap"])
    table.add_row(
        "s3",
        pid_cell(status["s3"]["pid"]),
        f"{status['s3']['endpoint']}  bucket {status['s3']['bucket']}",
    )
    for name in SERVICES:
        pid = status["services"].get(name)
        if pid is None and not service_available(name):
            continue
        table.add_row(name, pid_cell(pid), str(stack.log_path(name)))
    for name, pid in status["services"].items():
        if name not in SERVICES:
            table.add_row(name, pid_cell(pid), str(stack.log_path(name)))
    return table


def up(
    services: Annotated[
        bool, typer.Option("--services/--no-services", help="Also start every service.")
    ] = True,
) -> None:
    """Start the local broker and S3 store (and every service) in the background."""
    began = time.monotonic()
    try:
        stack = local_stack()
        with console.status("starting broker and object store…"):
            stack.start()
        started = []
        if services:
            for name in SERVICES:
                if service_available(name):
                    # Static group membership: a restarted service takes its partitions back
                    # at once (the embedded broker never expires a crashed member).
                    env = {f"MATTERFAB_{name.upper()}_INSTANCE_ID": f"{name}-local"}
                    stack.start_service(
                        name, service_argv(name), env=env, defaults=metrics_env(name)
                    )
                    started.append(name)
    except StackError as exc:
        raise _fail(exc) from exc
    if started:
        # A service that cannot start (bad config, missing profile) dies at once: say so now.
        time.sleep(SETTLE_S)
        running = stack.running_services()
        for name in started:
            if name not in running:
                err_console.print(
                    f"[bold red]{name} exited at start-up[/]; last lines of "
                    f"{stack.log_path(name)}:\n{stack.log_tail(name, 5)}"
                )
    console.print(_status_table(stack))
    console.print(
        f"[green]up[/] in {time.monotonic() - began:.1f}s; state in {stack.home} "
        "(`matterfab down` stops everything)"
    )


def down() -> None:
    """Stop every service, then the S3 store, then the broker (data is kept)."""
    began = time.monotonic()
    try:
        stack = local_stack()
        with console.status("stopping…"):
            stack.stop()
    except StackError as exc:
        raise _fail(exc) from exc
    console.print(f"[green]down[/] in {time.monotonic() - began:.1f}s (data kept in {stack.home})")


def status() -> None:
    """Show what of the local stack runs, where, and its PIDs."""
    try:
        stack = local_stack()
    except StackError as exc:
        raise _fail(exc) from exc
    console.print(_status_table(stack))


topics_app = typer.Typer(
    help="Kafka topics of the pipeline (deploy/topics.yaml).", no_args_is_help=True
)


@topics_app.command("apply")
def topics_apply(
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Topics file (default deploy/topics.yaml).")
    ] = None,
    replication_factor: Annotated[
        int, typer.Option("--replication-factor", "-r", min=1, help="For topics created now.")
    ] = 1,
) -> None:
    """Create missing topics and grow under-partitioned ones (idempotent, never deletes)."""
    try:
        specs = load_topics(file)
        settings = load_kafka_settings()
        report = asyncio.run(apply_topics(settings, specs, replication_factor))
    except StackError as exc:
        raise _fail(exc) from exc
    table = Table(title=f"topics on {settings.bootstrap}", title_justify="left")
    table.add_column("topic")
    table.add_column("partitions", justify="right")
    table.add_column("result")
    for spec in specs:
        if spec.name in report.created:
            result = "[green]created[/]"
        elif spec.name in report.grown:
            before, after = report.grown[spec.name]
            result = f"[yellow]grown {before}→{after}[/]"
        elif spec.name in report.mismatched:
            has, _ = report.mismatched[spec.name]
            result = f"[yellow]has {has} partitions, more than listed (left alone)[/]"
        else:
            result = "exists"
        table.add_row(spec.name, str(spec.partitions), result)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add `up`, `down`, `status` and `topics apply` to the `matterfab` app."""
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
    app.add_typer(topics_app, name="topics")
