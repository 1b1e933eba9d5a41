"""The pure parts of the benchmark run with tiny sizes (no timing assertions: numbers vary)."""

from pathlib import Path

import pytest

from bench import micro, run, spy
from bench.pipeline import Peak, summary


def test_floor_and_core_measure_what_they_count() -> None:
    floor = micro.measure_floor(4, 1, iterations=1000)
    core = micro.measure_core(3, 1, iterations=1000)
    assert (floor.devices, core.devices) == (4, 3)
    assert floor.per_s > 0 and core.per_s > 0
    assert core.as_dict()["devices_per_s"] == round(core.per_s, 2)


def test_breakdown_names_every_step() -> None:
    steps = micro.breakdown(samples=2, iterations=1000)
    assert set(steps) == {"dac_issue", "verifier", "nvs_image", "qr_png"}
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


def test_summary_ratios_chart_and_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")  # bench-only dependency
    results = {
        "iterations": 10000,
        "machine": {"cpus": 2, "loadavg_start": "0.1"},
        "floor": {"cryptography": {"devices_per_s": 300.0}},
        "core": {"one_core": {"devices_per_s": 100.0}, "all_cores": {"devices_per_s": 190.0}},
        "mfgtool": {"devices_per_s": 40.0},
        "pipeline": [
            {
                "name": "1x",
                "orders": [
                    {
                        "quantity": 10,
                        "seconds": 0.1,
                        "devices_per_s": 150.0,
                        "rss": {"builder-1": {**Peak(main=300 << 20).as_dict()}},
                    }
                ],
            }
        ],
    }
    run.summarise(results)
    assert results["ratios"] == {
        "pipeline_over_mfg_tool": 3.75,
        "pipeline_over_floor": 0.5,
        "core_one_core_over_mfg_tool": 2.5,
    }
    assert results["rss_over_limit"] == ["1x/10/builder-1"]
    assert "pipeline 1x (10)" in run.report(results)
    png = run.chart.draw(results, tmp_path / "chart.png")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"
