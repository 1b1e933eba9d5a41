"""The pure parts of the benchmark run with tiny sizes (no timing assertions: numbers vary)."""

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from obstore.exceptions import AlreadyExistsError
from prometheus_client import REGISTRY, generate_latest
from pydantic import SecretStr

from bench import micro, pipeline, run, spy, traffic
from bench.pipeline import Peak, RssSampler, cpu_per_device, thread_cpu
from bench.traffic import summary
from matterfab import s3
from matterfab.config import S3Settings
from matterfab.messages import DAC_LEDGER, DEVICES_ATTESTED, IMAGES_READY, WORK_ORDERS


def test_floor_and_core_measure_what_they_count() -> None:
    floor = micro.measure_floor(4, 1, iterations=1000)
    core = micro.measure_core(3, 1, iterations=1000)
    assert (floor.devices, core.devices) == (4, 3)
    assert floor.per_s > 0 and core.per_s > 0
    assert core.as_dict()["devices_per_s"] == round(core.per_s, 2)
    # CPU of the workers, not wall time: what the pipeline's per-process CPU is compared with.
    assert 0 < core.cpu_s and core.as_dict()["cpu_ms_per_device"] > 0


def test_pbkdf2_is_measured_against_as_many_compressions() -> None:
    p = micro.measure_pbkdf2(iterations=200, rounds=2)
    assert p["implementation"] == micro.native.IMPLEMENTATION
    assert (p["length"], p["compressions"]) == (80, 1200)  # 3 blocks, 2 compressions each
    assert set(p["ms"]) == {
        "native",
        "compressions_native_loop",
        "compressions_openssl_cryptography",
        "compressions_openssl_hashlib",
        "cryptography",
        "hashlib",
        "native_portable",
    }
    assert all(v > 0 for v in p["ms"].values())
    limit = min(v for k, v in p["ms"].items() if k.startswith("compressions_"))
    assert p["compressions_limit_ms"] == limit
    assert p["native_over_compressions"] == round(p["ms"]["native"] / limit, 3)


def test_floor_runs_each_pbkdf2() -> None:
    for impl in ("native", "cryptography", "hashlib"):
        assert micro.measure_floor(2, 1, iterations=1000, pbkdf2=impl).devices == 2


def test_breakdown_names_every_step() -> None:
    steps = micro.breakdown(samples=2, iterations=1000)
    assert set(steps) == {"dac_issue", "verifier", "nvs_image", "qr_png"}
    assert all(v > 0 for v in steps.values())


def test_label_breakdown_names_every_step() -> None:
    steps = micro.label_breakdown(samples=3)
    assert set(steps) == {
        "symbol",
        "make_qr_mask0",
        "best_mask",
        "best_mask_python",
        "remask",
        "png",
    }
    assert all(v > 0 for v in steps.values())


def test_core_device_builds_a_full_partition() -> None:
    micro._init_worker()
    assert micro.core_device(0, 1000) > 0x6000  # partition plus a PNG


def test_chunks_cover_every_device_once() -> None:
    for total, parts in ((1, 2), (7, 2), (400, 2), (1000, 8)):
        chunks = micro._chunks(total, parts)
        assert sum(n for _, n in chunks) == total
        assert [s for s, _ in chunks] == sorted({s for s, _ in chunks})


def test_latency_summary_percentiles() -> None:
    s = summary([float(i) for i in range(1, 101)])
    assert (s["n"], s["p50_s"], s["p99_s"], s["max_s"]) == (100, 51.0, 99.0, 100.0)
    assert summary([])["p99_s"] is None


def test_peak_reports_megabytes_and_cpu() -> None:
    p = Peak(main=200 * 1024 * 1024, child_max=0, children=0, total=200 * 1024 * 1024)
    p.cpu_start, p.cpu_last = 1.0, 3.5
    p.main_cpu_start, p.main_cpu_last = 1.0, 2.0
    assert p.as_dict() == {
        "main_mb": 200.0,
        "child_max_mb": 0.0,
        "children": 0,
        "total_mb": 200.0,
        "cpu_s": 2.5,
        "main_cpu_s": 1.0,
    }


def test_py_spy_collapsed_stacks_are_summarised() -> None:
    raw = "\n".join(
        [
            "process 1:main;run (a.py:1);handle (b.py:2);sign (c.py:3) 30",
            "process 1:main;run (a.py:1);handle (b.py:9) 10",
            "process 1:main;run (a.py:1);select (d.py:4) 60",
        ]
    )
    top = spy.top_entries(raw)
    assert top["samples"] == 100
    assert top["self"][0] == {"function": "select (d.py)", "samples": 60, "percent": 60.0}
    assert {"function": "handle (b.py)", "samples": 40, "percent": 40.0} in top["inclusive"]


def _order(quantity: int, cpu_s: float, cold: bool = False, **extra: Any) -> dict[str, Any]:
    usage = {
        "builder-1": {**Peak(main=300 << 20).as_dict(), "cpu_s": cpu_s},
        "kafka": {**Peak().as_dict(), "cpu_s": cpu_s / 10},
    }
    return {
        "quantity": quantity,
        "cold": cold,
        "seconds": quantity / 150,
        "devices_per_s": 150.0,
        "rss": usage,
        "cpu_ms_per_device": cpu_per_device(usage, quantity),
        "s3_requests": traffic.requests({}, {"builder-1": {"put": 1.2 * quantity}}, quantity),
        "kafka": {
            "records": quantity,
            "bytes": 0,
            "records_per_device": 1.1,
            "bytes_per_device": 900.0,
            "topics": {},
        },
        "broker_snapshot": {"writes": 3, "max_bytes": 1 << 20, "last_bytes": 1 << 20},
        **extra,
    }


def test_summary_ratios_targets_chart_and_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")  # bench-only dependency
    results: dict[str, Any] = {
        "iterations": 10000,
        "machine": {"cpus": 2, "loadavg_start": "0.1"},
        "pbkdf2": {
            "described": "native sha-ni (3 blocks interleaved)",
            "iterations": 10000,
            "length": 80,
            "compressions": 60000,
            "rounds": 3,
            "ms": {
                "native": 1.6,
                "compressions_native_loop": 2.0,
                "compressions_openssl_cryptography": 2.1,
                "compressions_openssl_hashlib": 2.2,
                "cryptography": 3.0,
                "hashlib": 5.3,
                "native_portable": 20.0,
            },
            "compressions_limit_ms": 2.0,
            "native_over_compressions": 0.8,
            "openssl_bulk_gb_per_s": 1.83,
            "openssl": {"cryptography": "OpenSSL 4", "hashlib": "OpenSSL 3"},
            "cryptography_over_native": 1.88,
            "hashlib_over_native": 3.31,
        },
        "floor": {"native": {"devices_per_s": 300.0}, "cryptography": {"devices_per_s": 200.0}},
        "core": {
            "one_core": {"devices_per_s": 100.0, "cpu_ms_per_device": 10.0},
            "all_cores": {"devices_per_s": 190.0},
        },
        "mfgtool": {"devices_per_s": 40.0},
        "pipeline": [
            {
                "name": "1x",
                "first_order_over_warm": 1.1,
                # cold 10, warm 10 (CPU 15 + 1.5 ms/device), then a 100 (broker 2x per device)
                "orders": [
                    _order(10, 0.3, cold=True),
                    _order(10, 0.15, core_cpu_ms_per_device=11.0),  # core measured beside it
                ],
            },
            {  # --big: on a stack of its own, a base order then a big one (broker 2x per device)
                "name": "1x+big",
                "big": True,
                "orders": [_order(10, 0.15), {**_order(100, 1.5), "rss": {}}],
            },
        ],
        "paced": {"rate_devices_per_s": 90.0, "latency": {"attested_to_ready": {"p99_s": 0.4}}},
    }
    results["pipeline"][1]["orders"][1]["cpu_ms_per_device"]["kafka"] = 3.0
    run.summarise(results)
    ratios = results["ratios"]
    assert ratios["pipeline_over_mfg_tool"] == 3.75
    assert ratios["pipeline_cold_over_mfg_tool"] == 3.75
    assert ratios["pbkdf2_native_over_compressions"] == 0.8
    assert ratios["s3_cpu_ms_per_device"] == 0.0
    assert ratios["rss_largest_service_mb"] == 300.0  # builder-1's 300 MB main process
    assert ratios["pipeline_over_floor"] == 0.5
    assert ratios["core_one_core_over_mfg_tool"] == 2.5
    assert ratios["pipeline_cpu_over_core_cpu"] == 1.5  # (15 + 1.5) / 11: the warm order
    assert ratios["pipeline_cpu_over_core_cpu_at_start"] == 1.65  # / 10: the `core` part's
    assert ratios["s3_requests_per_device"] == 1.2
    assert ratios["kafka_records_per_device"] == 1.1
    assert ratios["first_order_over_warm"] == 1.1
    assert ratios["broker_cpu_big_over_base"] == 2.0
    assert ratios["paced_attested_to_ready_p99_s"] == 0.4
    met = {t["ratio"]: t["met"] for t in results["targets"]}
    # issue #26: PBKDF2 at the SHA-256 limit, >= 5x mfg_tool, <= 0.2 S3 requests per device
    assert met["pbkdf2_native_over_compressions"] and met["s3_cpu_ms_per_device"]
    assert not met["pipeline_over_mfg_tool"] and not met["pipeline_cold_over_mfg_tool"]
    assert not met["s3_requests_per_device"] and not met["pipeline_cpu_over_core_cpu"]
    assert not met["broker_cpu_big_over_base"] and not met["rss_largest_service_mb"]
    over = ["1x/10/builder-1", "1x/10/builder-1", "1x+big/10/builder-1"]
    assert results["rss_over_limit"] == over
    assert results["big_vs_base"]["base"]["quantity"] == 10
    text = run.report(results)
    assert "pipeline 1x (10)" in text and "1x/10 cold" in text
    assert "CPU ms: builder (with workers)" in text and "beside the order" in text
    assert "MISSED" in text
    assert "native sha-ni (3 blocks interleaved)" in text and "0.8x the compressions" in text
    assert "target pbkdf2_native_over_compressions <= 1.0: 0.8 met" in text
    png = run.chart.draw(results, tmp_path / "chart.png")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"


def test_memory_flat_compares_the_largest_service_process() -> None:
    def order(builder_child_mb: int, kafka_mb: int) -> dict[str, Any]:
        return {
            "rss": {
                "builder-1": Peak(main=90 << 20, child_max=builder_child_mb << 20).as_dict(),
                "signer-1": Peak(main=80 << 20).as_dict(),
                "kafka": Peak(main=kafka_mb << 20).as_dict(),  # infrastructure: not a service
            }
        }

    assert run._largest_service_mb(order(120, 900)) == 120.0
    assert run._largest_service_mb(order(60, 900)) == 90.0
    assert run._largest_service_mb({}) == 0.0


def test_cpu_per_device_adds_up_instances_by_kind() -> None:
    usage = {
        "signer-1": {"cpu_s": 1.0},
        "signer-2": {"cpu_s": 3.0},
        "builder-1": {"cpu_s": 10.0},
        "kafka": {"cpu_s": 2.0},
    }
    table = cpu_per_device(usage, 1000)
    assert table["signer"] == 4.0 and table["builder"] == 10.0 and table["kafka"] == 2.0
    assert table["allocator"] == 0.0 and table["total"] == 16.0


def test_s3_requests_are_scraped_from_the_exposition_and_differenced() -> None:
    s3._SENT["put"].inc(0)  # the counter is registered with the default registry
    ops = traffic.s3_requests_in(generate_latest(REGISTRY).decode())
    assert "put" in ops
    before = {"signer-1": {"put": 5.0, "list": 2.0}, "builder-1": {"put": 10.0}}
    after = {"signer-1": {"put": 25.0, "list": 3.0}, "builder-1": {"put": 50.0, "get": 1.0}}
    got = traffic.requests(before, after, 20)
    assert got["total"] == 62 and got["per_device"] == 3.1
    assert got["by_op"] == {"get": 1, "list": 1, "put": 60}
    assert got["by_service_per_device"] == {"builder": 2.05, "signer": 1.05}
    assert got["unscraped"] == []


def _value(op: str) -> float:
    return REGISTRY.get_sample_value("matterfab_s3_requests_total", {"op": op}) or 0.0


def test_object_store_counts_one_request_per_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    store = s3.ObjectStore(
        S3Settings(endpoint="http://127.0.0.1:1", access_key="k", secret_key=SecretStr("s"))
    )
    stored: dict[str, bytes] = {}

    async def put_async(_store: Any, key: str, data: bytes, **kw: Any) -> None:
        if kw.get("mode") == "create" and key in stored:
            raise AlreadyExistsError(key)
        stored[key] = data

    async def get_async(_store: Any, key: str) -> Any:
        async def body() -> bytes:
            return stored[key]

        return SimpleNamespace(bytes_async=body, attributes={})

    def list_pages(_store: Any, prefix: str | None, chunk_size: int) -> Any:
        async def pages() -> Any:
            for page in ([{"path": "a/1"}] * 1000, [{"path": "a/2"}]):
                yield page

        return pages()

    monkeypatch.setattr(s3.obstore, "put_async", put_async)
    monkeypatch.setattr(s3.obstore, "get_async", get_async)
    monkeypatch.setattr(s3.obstore, "list", list_pages)
    before = {op: _value(op) for op in ("put", "get", "list")}

    async def work() -> None:
        await store.put_once("a/1", b"x")  # one PUT
        await store.put_once("a/1", b"x")  # a taken key: the PUT, then a GET to compare
        await store.list_keys("a/")  # two pages: two requests

    asyncio.run(work())
    assert {op: _value(op) - before[op] for op in before} == {"put": 2, "get": 1, "list": 2}


def _rec(value: dict[str, Any], timestamp_ms: int, key: bytes = b"k") -> Any:
    return SimpleNamespace(
        key=key, value=json.dumps(value).encode(), headers=[], timestamp=timestamp_ms
    )


def test_read_back_counts_records_and_times_devices_of_a_lot() -> None:
    back = traffic.ReadBack()
    order = {"O"}
    lot = {"type": "lot-attested/v1", "order_id": "O", "devices": [{"index": 0}, {"index": 1}]}
    ledger = {
        "type": "dac-ledger-lot/v1",
        "order_id": "O",
        "dacs": [
            {"device_id": "O/0000000", "issued_at": "2026-01-01T00:00:09+00:00"},
            {"device_id": "O/0000001", "issued_at": "2026-01-01T00:00:09+00:00"},
        ],
    }
    t0 = 1767225600_000  # 2026-01-01T00:00:00Z in ms
    back.add(DEVICES_ATTESTED, _rec(lot, t0 + 10_000), order)
    back.add(DAC_LEDGER, _rec(ledger, t0 + 10_000), order)
    for i, at in ((0, "10.25"), (1, "10.75")):
        ready = {
            "type": "image-ready/v1",
            "order_id": "O",
            "device_id": f"O/000000{i}",
            "at": f"2026-01-01T00:00:{at}+00:00",
        }
        back.add(IMAGES_READY, _rec(ready, t0 + 11_000), order)
    back.add(WORK_ORDERS, _rec({"order_id": "O"}, t0), order)  # counted, not timed
    back.add(IMAGES_READY, _rec({**ready, "order_id": "other"}, t0), order)  # counted only
    lat = back.latency()
    assert lat["devices"] == 2
    assert lat["attested_to_ready"]["max_s"] == 0.75
    assert lat["attested_to_ready_published"]["p50_s"] == 1.0
    assert lat["issued_to_ready"]["max_s"] == 1.75
    back.offsets.update({DEVICES_ATTESTED: 1, DAC_LEDGER: 1, IMAGES_READY: 3, WORK_ORDERS: 1})
    traffic_ = back.traffic(2)
    assert traffic_["records"] == 6 and traffic_["records_per_device"] == 3.0
    assert traffic_["topics"][IMAGES_READY]["records_per_device"] == 1.5
    assert traffic_["bytes"] == sum(t["bytes"] for t in traffic_["topics"].values()) > 0
    # when each topic saw its first and last record, after the work order's
    attested = traffic_["topics"][DEVICES_ATTESTED]
    assert (attested["first_s"], attested["last_s"]) == (10.0, 10.0)
    assert traffic_["topics"][IMAGES_READY]["last_s"] == 11.0


def test_sampler_counts_rewrites_of_a_watched_file(tmp_path: Path) -> None:
    snapshot = tmp_path / "kafka.json"
    snapshot.write_text("{}")
    sampler = RssSampler({}, files={"snap": snapshot})
    sampler.take_all()
    for n in range(1, 3):
        snapshot.write_text("{}" * 10 * n)
        os.utime(snapshot, ns=(n * 10**9, n * 10**9))  # a distinct mtime per rewrite
        sampler._sample()
    files = sampler.take_all().files
    assert files["snap"] == {"writes": 2, "max_bytes": 40, "last_bytes": 40}
    assert sampler.take_all().files["snap"]["writes"] == 0


def test_thread_cpu_is_summed_by_thread_name() -> None:
    import threading

    def spin() -> None:
        end = time.process_time() + 0.2
        while time.process_time() < end:
            pass

    worker = threading.Thread(target=spin, name="bench-spin")
    worker.start()
    worker.join(0.1)
    cpu = thread_cpu(os.getpid())  # read while the thread still runs
    worker.join()
    assert cpu and all(v >= 0 for v in cpu.values())
    assert sum(cpu.values()) <= time.process_time() + 0.01


class _FakeBench:
    """What run_config needs of a Bench, without a stack."""

    kafka = None
    broker_snapshot = Path("/nonexistent/kafka.json")

    def __init__(self) -> None:
        self.orders: list[int] = []

    @contextlib.contextmanager
    def running(self, instances: dict[str, int]) -> Any:
        yield {}

    def infra_pids(self) -> dict[str, int]:
        return {}

    def order(self, quantity: int, iterations: int = 10000) -> dict[str, Any]:
        self.orders.append(quantity)
        return {"order_id": f"O{len(self.orders)}", "quantity": quantity}


@pytest.mark.parametrize("cold", [True, False])
def test_run_config_measures_a_cold_order_then_warm_ones(
    monkeypatch: pytest.MonkeyPatch, cold: bool
) -> None:
    seconds = iter([12.0, 10.0, 90.0])

    def measure(bench: Any, sampler: Any, size: int, *args: Any) -> dict[str, Any]:
        s = next(seconds)
        return {"quantity": size, "seconds": s, "devices_per_s": size / s}

    async def submit(settings: Any, order: dict[str, Any], timeout: float) -> dict[str, Any]:
        return {"order_id": order["order_id"], "seconds": 0.1}

    monkeypatch.setattr(pipeline, "measure_order", measure)
    monkeypatch.setattr(pipeline, "submit_and_wait", submit)
    cfg = pipeline.run_config(_FakeBench(), "1x", {}, [100, 1000], cold=cold)  # type: ignore[arg-type]
    got = [(o["quantity"], o["cold"]) for o in cfg["orders"]]
    if cold:  # the first size cold, then every size warm
        assert got == [(100, True), (100, False), (1000, False)]
        assert cfg["first_order_over_warm"] == 1.2
    else:  # an unmeasured warm-up order instead
        assert got == [(100, False), (1000, False)] and "warm_up" in cfg
        assert "first_order_over_warm" not in cfg
