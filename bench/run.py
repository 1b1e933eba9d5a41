"""`make bench` / `python -m bench.run`: matterfab's throughput, memory and latency on this machine.

One run measures, on the same machine and at the same PBKDF2 iteration count:
the crypto floor, the core library on one core and on all cores, esp-matter-mfg-tool, and the
pipeline end to end on a local stack it starts itself (one instance of each service, then two
signers and two builders), with peak RSS per service and per-device latencies. Results go to
bench/out/results.json and bench/out/throughput.png; ratios are printed at the end.

    python -m bench.run                 # default sizes (orders of 2,000 devices)
    python -m bench.run --quick         # small sizes: checks the harness in a minute
    python -m bench.run --big           # adds a 20,000-device order (memory must stay flat)
    python -m bench.run --profile       # py-spy the signer and builder during the first order
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import allocation, chart, micro

OUT = Path(__file__).resolve().parent / "out"
PARTS = ("floor", "core", "mfgtool", "pipeline", "paced", "allocation")
RSS_LIMIT_MB = 200
CONFIGS = {  # instances per service
    "1x": {"allocator": 1, "signer": 1, "builder": 1, "assembler": 1},
    "2x": {"allocator": 1, "signer": 2, "builder": 2, "assembler": 1},
}
INFRA = ("kafka", "s3")  # sampled for CPU, but not services: the RSS limit is not theirs

log = logging.getLogger("bench")


def loadavg() -> str:
    """The 1/5/15-minute load averages, as text."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a harness check)")
    p.add_argument("--sizes", type=int, nargs="+", help="pipeline order sizes (default 2000)")
    p.add_argument("--big", action="store_true", help="also a 20,000-device order (1x config)")
    p.add_argument("--profile", action="store_true", help="py-spy signer and builder")
    p.add_argument("--iterations", type=int, default=10000, help="PBKDF2 iterations")
    p.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts")
    p.add_argument("--out", type=Path, default=OUT, help="output folder (default bench/out)")
    p.add_argument("--paced-seconds", type=float, help="length of the steady-load latency run")
    p.add_argument("--configs", nargs="+", choices=CONFIGS, help="pipeline configs (default all)")
    p.add_argument(
        "--service-cmd",
        help="command that runs a service, before `serve NAME` (default: this Python -m "
        "matterfab.cli.main); to bench a patched build",
    )
    return p.parse_args(argv)


def sizes_for(args: argparse.Namespace) -> dict[str, Any]:
    """How many devices each part measures."""
    quick = args.quick
    return {
        "floor": 60 if quick else 600,
        "core_1": 20 if quick else 200,
        "core_all": 40 if quick else 400,
        "mfgtool": 50 if quick else 2000,
        "pipeline": args.sizes or ([100] if quick else [2000]),
        "big": 20000,
        "paced_seconds": args.paced_seconds or (8.0 if quick else 30.0),
        "allocation": 5000 if quick else 100_000,
    }


REPEATS = 3  # short micro runs: the best of a few, as the machine's speed drifts (shared host)


def _best(measure: Any, *args: Any) -> tuple[Any, list[float]]:
    """The fastest of REPEATS runs of `measure(*args)`, and every run's devices/s."""
    runs = [measure(*args) for _ in range(REPEATS)]
    return max(runs, key=lambda r: r.per_s), [round(r.per_s, 2) for r in runs]


def run_micro(results: dict[str, Any], n: dict[str, Any], iterations: int, workers: int) -> None:
    """Floor and core library."""
    if "floor" in results["parts"]:
        for impl in ("cryptography", "hashlib"):
            rate, runs = _best(micro.measure_floor, n["floor"], workers, iterations, impl)
            results["floor"][impl] = {**rate.as_dict(), "runs": runs, "loadavg": loadavg()}
            log.info("floor (%s PBKDF2): %.1f devices/s (runs %s)", impl, rate.per_s, runs)
    if "core" in results["parts"]:
        one, runs = _best(micro.measure_core, n["core_1"], 1, iterations)
        results["core"]["one_core"] = {**one.as_dict(), "runs": runs, "loadavg": loadavg()}
        log.info("core library, 1 process: %.1f devices/s (runs %s)", one.per_s, runs)
        every, runs = _best(micro.measure_core, n["core_all"], workers, iterations)
        results["core"]["all_cores"] = {**every.as_dict(), "runs": runs, "loadavg": loadavg()}
        log.info("core library, %d processes: %.1f devices/s (runs %s)", workers, every.per_s, runs)
        results["core"]["breakdown_ms"] = micro.breakdown(20 if n["core_1"] < 100 else 100)


def run_mfgtool(results: dict[str, Any], count: int, iterations: int) -> None:
    """esp-matter-mfg-tool -n COUNT, issuing DACs from a PAI."""
    from tests.conformance.mfgtool import MfgToolMissing, time_batch

    try:
        with tempfile.TemporaryDirectory(prefix="bench-mfgtool-") as tmp:
            started = time.perf_counter()
            per_device = time_batch(count, Path(tmp), iterations)
            wall = time.perf_counter() - started
    except MfgToolMissing as exc:
        results["mfgtool"] = {"error": str(exc)}
        return
    results["mfgtool"] = {
        "devices": count,
        "seconds": round(per_device * count, 3),
        "devices_per_s": round(1 / per_device, 2),
        "ms_per_device": round(1000 * per_device, 3),
        "wall_with_setup_s": round(wall, 3),
        "loadavg": loadavg(),
    }
    log.info("esp-matter-mfg-tool -n %d: %.1f devices/s", count, 1 / per_device)


def run_pipeline(results: dict[str, Any], args: argparse.Namespace, n: dict[str, Any]) -> None:
    """The services on a local stack: 1x and 2x (signer, builder), and the paced latency run."""
    from bench import pipeline, spy

    configs = [(name, CONFIGS[name]) for name in args.configs or CONFIGS]
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as tmp:
        bench = pipeline.Bench(Path(tmp))
        if args.service_cmd:
            bench.service_cmd = shlex.split(args.service_cmd)
        results["service_cmd"] = bench.service_cmd
        bench.start()
        try:
            if "pipeline" in results["parts"]:
                for name, instances in configs:
                    sizes = list(n["pipeline"])
                    if args.big and name == configs[0][0]:
                        sizes.append(n["big"])
                    tag = name

                    def profile(pids: dict[str, int], size: int, tag: str = tag) -> Any:
                        chosen = {
                            k: v
                            for k, v in pids.items()
                            if k.split("-")[0] in ("signer", "builder")
                        }
                        return spy.Profiles(chosen, args.out, f"{tag}-{size}")

                    cfg = pipeline.run_config(
                        bench,
                        name,
                        instances,
                        sizes,
                        args.iterations,
                        profile if args.profile else None,
                    )
                    cfg["loadavg"] = loadavg()
                    results["pipeline"].append(cfg)
            if "paced" in results["parts"]:
                best = max(
                    (o["devices_per_s"] for c in results["pipeline"] for o in c["orders"]),
                    default=40.0,
                )
                instances = configs[-1][1]
                paced = pipeline.run_paced(
                    bench, instances, 0.6 * best, n["paced_seconds"], 10, args.iterations
                )
                paced["instances"] = instances
                paced["loadavg"] = loadavg()
                results["paced"] = paced
        finally:
            bench.stop()


def summarise(results: dict[str, Any]) -> None:
    """Bars, reference lines and ratios for the chart and the console."""
    bars: list[dict[str, Any]] = []
    floor = results["floor"].get("cryptography", {}).get("devices_per_s")
    tool = results.get("mfgtool", {}).get("devices_per_s")
    if floor:
        bars.append({"label": "crypto floor", "devices_per_s": floor})
    for key, label in (("one_core", "core, 1 core"), ("all_cores", "core, all cores")):
        if key in results["core"]:
            bars.append({"label": label, "devices_per_s": results["core"][key]["devices_per_s"]})
    pipe: dict[str, float] = {}
    for cfg in results["pipeline"]:
        for order in cfg["orders"]:
            if "devices_per_s" in order:
                label = f"pipeline {cfg['name']} ({order['quantity']})"
                pipe[label] = order["devices_per_s"]
                bars.append({"label": label, "devices_per_s": order["devices_per_s"]})
    if tool:
        bars.append({"label": "esp-matter-mfg-tool", "devices_per_s": tool})
    results["bars"] = bars
    results["references"] = {"floor": floor, "mfg_tool": tool}
    ratios: dict[str, Any] = {}
    best_pipe = max(pipe.values(), default=None)
    one = results["core"].get("one_core", {}).get("devices_per_s")
    if best_pipe and tool:
        ratios["pipeline_over_mfg_tool"] = round(best_pipe / tool, 2)
    if best_pipe and floor:
        ratios["pipeline_over_floor"] = round(best_pipe / floor, 3)
    if one and tool:
        ratios["core_one_core_over_mfg_tool"] = round(one / tool, 2)
    results["ratios"] = ratios
    over = [
        f"{cfg['name']}/{o['quantity']}/{svc}"
        for cfg in results["pipeline"]
        for o in cfg["orders"]
        for svc, peak in o.get("rss", {}).items()
        if svc not in INFRA and max(peak["main_mb"], peak["child_max_mb"]) > RSS_LIMIT_MB
    ]
    results["rss_over_limit"] = over


def report(results: dict[str, Any]) -> str:
    """A plain-text summary."""
    lines = [f"machine: {results['machine']}"]
    for bar in results["bars"]:
        lines.append(f"  {bar['label']:<38} {bar['devices_per_s']:>8.1f} devices/s")
    for cfg in results["pipeline"]:
        for o in cfg["orders"]:
            lat = o.get("latency", {}).get("attested_to_ready", {})
            lines.append(
                f"  {cfg['name']} order of {o['quantity']}: {o.get('seconds')} s; "
                f"attested->ready p50 {lat.get('p50_s')} s p99 {lat.get('p99_s')} s "
                "(includes backlog)"
            )
            cpu_total = 0.0
            for svc, peak in o.get("rss", {}).items():
                cpu_ms = 1000 * peak["cpu_s"] / o["quantity"]
                cpu_total += cpu_ms
                lines.append(
                    f"    {svc:<14} RSS main {peak['main_mb']:>6} MB, largest child "
                    f"{peak['child_max_mb']:>6} MB ({peak['children']} children), "
                    f"total {peak['total_mb']:>6} MB; CPU {cpu_ms:6.2f} ms/device"
                )
            lines.append(f"    all processes: CPU {cpu_total:.2f} ms/device")
            for svc, prof in o.get("profile", {}).items():
                lines.append(f"    profile {svc}: {prof.get('samples', 0)} samples")
                for entry in prof.get("self", [])[:8]:
                    lines.append(f"      {entry['percent']:>5}%  {entry['function']}")
    if results.get("paced"):
        p = results["paced"]
        lat = p["latency"].get("attested_to_ready", {})
        lines.append(
            f"  steady load {p['rate_devices_per_s']} devices/s: attested->ready p50 "
            f"{lat.get('p50_s')} s, p99 {lat.get('p99_s')} s"
        )
    if results.get("allocation"):
        a = results["allocation"]
        lines.append(
            f"  allocation of a {a['devices']}-device pattern order: {a['before_s']} s before the "
            f"identity registry, {a['after_s']} s with it ({a['after_over_before']}x); "
            f"{a['registry_objects_per_order']} registry object ({a['claim_record_bytes']} bytes)"
        )
    lines.append(f"ratios: {results['ratios']}")
    lines.append(f"services above {RSS_LIMIT_MB} MB: {results['rss_over_limit'] or 'none'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 when every part ran."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    n = sizes_for(args)
    workers = os.cpu_count() or 1
    results: dict[str, Any] = {
        "iterations": args.iterations,
        "parts": list(args.only or PARTS),
        "sizes": n,
        "machine": {
            "cpus": workers,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_start": loadavg(),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "floor": {},
        "core": {},
        "pipeline": [],
    }
    run_micro(results, n, args.iterations, workers)
    if "mfgtool" in results["parts"]:
        run_mfgtool(results, n["mfgtool"], args.iterations)
    if {"pipeline", "paced"} & set(results["parts"]):
        run_pipeline(results, args, n)
    if "allocation" in results["parts"]:
        results["allocation"] = allocation.measure(n["allocation"])
        log.info("allocation: %s", results["allocation"])
    results["machine"]["loadavg_end"] = loadavg()
    summarise(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    png = chart.draw(results, args.out / "throughput.png")
    print(report(results))
    print(f"results: {args.out / 'results.json'}; chart: {png or 'matplotlib not installed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
