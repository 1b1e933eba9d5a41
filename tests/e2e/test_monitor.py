"""Operations end to end: every service's metrics, `matterfab lag`, the monitor and its page.

Starts its own allocator, signer, builder, assembler (each with a metrics port) and a monitor,
runs an order through them, then checks what ops see: lag drained to zero, the monitor's
metrics and status API, and the status page rendered by a real headless Chromium (which must
be installed: `make install` puts it there; a missing browser fails the test).

If the session `pipeline` fixture runs too, its instances share the consumer groups with ours;
that only splits the work, so nothing here depends on which instance handled what.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from matterfab.stack import LocalStack, free_ports
from tests.e2e.conftest import LOT_MAX_DEVICES
from tests.pipeline import PIPELINE, Services, matterfab, wait_for, work_order, write_order

pytestmark = pytest.mark.timeout(600)

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PIPELINE_GROUPS = [f"matterfab-{s}" for s in PIPELINE]
INSTANCE = 7  # instance number of our processes: never the pipeline fixture's 1 and 2
QUANTITY = 6
RSS_LIMIT_MB = 200


def http_get(url: str, timeout: float = 5) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=timeout) as res:  # only 127.0.0.1 URLs
        return res.status, res.headers.get("Content-Type", ""), res.read().decode()


def answers(url: str) -> bool:
    try:
        return http_get(url, timeout=2)[0] == 200
    except OSError:
        return False


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(
            "chromium is not installed (Debian package `chromium`, see Makefile APT_PACKAGES)"
        )
    return path


def chromium_argv(profile_dir: Path) -> list[str]:
    return [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile_dir}",
        "--virtual-time-budget=5000",
        "--window-size=1280,720",
    ]


@pytest.fixture(scope="module")
def ops(stack: LocalStack, profile: str) -> Any:
    """Our own pipeline with metrics ports, plus a monitor; stopped at the end of the module."""
    services = Services(stack)
    ports = free_ports(len(PIPELINE) + 1)
    metrics = dict(zip(PIPELINE, ports, strict=False))
    monitor_port = ports[-1]
    try:
        for name, port in metrics.items():
            services.start(
                name,
                INSTANCE,
                **{
                    f"MATTERFAB_{name.upper()}_METRICS_PORT": str(port),
                    "MATTERFAB_BUILDER_WORKERS": "1",
                    # Our allocator shares the group with the session pipeline's: it cuts the
                    # orders it takes as that one does, or test_pipeline's lots differ by host.
                    "MATTERFAB_LOT_MAX_DEVICES": str(LOT_MAX_DEVICES),
                },
            )
        services.start(
            "monitor",
            INSTANCE,
            MATTERFAB_MONITOR_PORT=str(monitor_port),
            MATTERFAB_MONITOR_REFRESH_S="1",
        )
        monitor_url = f"http://127.0.0.1:{monitor_port}"
        for name, port in metrics.items():
            wait_for(
                lambda port=port: answers(f"http://127.0.0.1:{port}/metrics"),
                60,
                f"{name} metrics on port {port}\n{services.log(f'{name}-{INSTANCE}')[-2000:]}",
            )
        wait_for(
            lambda: answers(f"{monitor_url}/healthz"),
            60,
            f"monitor on port {monitor_port}\n{services.log(f'monitor-{INSTANCE}')[-2000:]}",
        )
        yield {"services": services, "metrics": metrics, "monitor": monitor_url}
    finally:
        services.stop_all()


@pytest.fixture(scope="module")
def order_id(
    stack: LocalStack, ops: Any, profile: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    oid = f"E2E-MON-{uuid.uuid4().hex[:6]}"
    path = write_order(tmp_path_factory.mktemp("orders"), work_order(oid, QUANTITY, profile))
    done = matterfab(stack, "order", "submit", str(path), "--wait", "--timeout", "300")
    assert done.returncode == 0, done.stdout + done.stderr
    return oid


def test_every_service_serves_prometheus_metrics(ops: Any, order_id: str) -> None:
    for name, port in ops["metrics"].items():
        status, ctype, text = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and ctype.startswith("text/plain"), name
        assert "# TYPE matterfab_messages_total counter" in text, name
        assert "matterfab_processing_seconds" in text, name


def test_lag_drains_to_zero_for_every_pipeline_group(stack: LocalStack, order_id: str) -> None:
    last: dict[str, Any] = {}

    def drained() -> bool:
        done = matterfab(stack, "lag", "--json", timeout=120)
        assert done.returncode == 0, done.stderr
        groups = {g["group"]: g for g in json.loads(done.stdout)["groups"]}
        last.update(groups)
        return all(g in groups and groups[g]["lag"] == 0 for g in PIPELINE_GROUPS)

    try:
        wait_for(drained, 120, "lag 0 in every pipeline group", interval=1)
    except AssertionError:
        raise AssertionError(
            {g: last.get(g, {}).get("lag", "absent") for g in PIPELINE_GROUPS}
        ) from None
    for group in PIPELINE_GROUPS:
        assert last[group]["partitions"], group  # it committed somewhere: a real reading
    table = matterfab(stack, "lag", "--group", "matterfab-signer")
    assert table.returncode == 0, table.stderr
    assert "matterfab-signer · mfg.devices.allocated · lag 0" in table.stdout


def test_monitor_reports_order_progress_and_lag(ops: Any, order_id: str) -> None:
    url = ops["monitor"]

    def completed() -> dict[str, Any] | None:
        doc = json.loads(http_get(f"{url}/api/status")[2])
        orders = {o["order_id"]: o for o in doc["orders"]}
        groups = {g["group"]: g for g in doc["groups"]}
        order = orders.get(order_id)
        if order and order["status"] == "completed" and groups.get("matterfab-builder"):
            return doc
        return None

    doc = wait_for(completed, 60, f"the monitor to show {order_id} completed")
    order = {o["order_id"]: o for o in doc["orders"]}[order_id]
    assert (order["ready"], order["quantity"], order["percent"]) == (QUANTITY, QUANTITY, 100)
    assert order["manifest"] == f"orders/{order_id}/manifest.json"

    def lag_metrics_zero() -> dict[Any, float] | None:
        found = samples(http_get(f"{url}/metrics")[2])
        lags = [found.get(("matterfab_group_lag", (("group", g),))) for g in PIPELINE_GROUPS]
        return found if all(v == 0 for v in lags) else None

    found = wait_for(lag_metrics_zero, 60, "monitor metrics to show zero lag")
    label = (("order_id", order_id),)
    assert found[("matterfab_order_ready", label)] == QUANTITY
    assert found[("matterfab_order_quantity", label)] == QUANTITY
    assert found[("matterfab_order_flashed", label)] == 0
    assert found[("matterfab_order_progress_ratio", label)] == 1
    assert found[("matterfab_order_completed", label)] == 1
    per_partition = [
        k
        for k in found
        if k[0] == "matterfab_consumer_lag" and ("group", "matterfab-signer") in k[1]
    ]
    assert len(per_partition) == 6  # mfg.devices.allocated has 6 partitions (deploy/topics.yaml)


def test_monitor_stays_small_and_fast(stack: LocalStack, ops: Any, order_id: str) -> None:
    running = stack.running_services()
    rss = {name: rss_mb(running[f"{name}-{INSTANCE}"]) for name in (*PIPELINE, "monitor")}
    timings = {}
    for path in ("/", "/api/status", "/metrics"):
        started = time.perf_counter()
        assert http_get(ops["monitor"] + path)[0] == 200
        timings[path] = (time.perf_counter() - started) * 1000
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "monitor-numbers.txt").write_text(
        "".join(f"RSS {name}: {mb:.1f} MB\n" for name, mb in rss.items())
        + "".join(f"GET {path}: {ms:.1f} ms\n" for path, ms in timings.items())
    )
    assert rss["monitor"] < RSS_LIMIT_MB, f"monitor RSS {rss['monitor']:.0f} MB"
    assert all(ms < 1000 for ms in timings.values()), timings


def test_status_page_renders_order_at_100_percent(ops: Any, order_id: str, tmp_path: Path) -> None:
    url = ops["monitor"] + "/"
    # Only once the API says so: the page must then show it (it renders what the API returns).
    wait_for(
        lambda: any(
            o["order_id"] == order_id and o["percent"] == 100
            for o in json.loads(http_get(ops["monitor"] + "/api/status")[2])["orders"]
        ),
        60,
        "the order at 100% in /api/status",
    )
    started = time.monotonic()
    dom = subprocess.run(
        [*chromium_argv(tmp_path / "chromium-dom"), "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    row_start = html.find(f'data-order-id="{order_id}"')
    assert row_start >= 0, html[-3000:]
    row = html[row_start : html.find("</tr>", row_start)]
    assert "100%" in row and "completed" in row, row
    assert '<div id="error"></div>' in html  # neither fetch nor lag reading failed
    assert 'data-group="matterfab-builder"' in html

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    shot.unlink(missing_ok=True)
    done = subprocess.run(
        [*chromium_argv(tmp_path / "chromium-shot"), f"--screenshot={shot}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.stat().st_size > 5000  # a rendered page, not an empty canvas
    with (ARTIFACTS / "monitor-numbers.txt").open("a") as numbers:
        numbers.write(f"chromium --dump-dom (start, load, 5 s virtual budget): {elapsed:.2f}s\n")
