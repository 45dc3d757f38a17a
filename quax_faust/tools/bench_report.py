"""The report of `quax bench`: the summary table (measured, target, the original chain) and the
PNG of file latency over the real-time phase.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ORIGINAL = {"realtime_factor": 0.25, "producer_messages_per_s": 165, "spark_slices_per_s": 250,
            "machine": "4 VMs, 16 vCPUs (Kafka + Spark Structured Streaming)"}
TARGETS = {"realtime_factor": 10.0, "latency_p99_s": 1.0, "fft_ratio": 1.5}


def summary_rows(r: dict) -> list[tuple[str, str, str, str]]:
    """(what, measured here, target, the original) rows of the summary table."""
    t, lat, fft, res = r["throughput"], r["latency"], r["fft"], r["resources"]
    workers = {k: v for k, v in res["peak_rss_bytes"].items() if k.startswith("worker")}
    fmt = lambda x, spec: "n/a" if x is None else format(x, spec)  # noqa: E731
    return [
        ("real-time factor, steady (max pace)", f"{t['realtime_factor_steady']:.1f}x",
         f">= {TARGETS['realtime_factor']:.0f}x", f"{ORIGINAL['realtime_factor']}x"),
        ("real-time factor, whole run", f"{t['realtime_factor_run']:.1f}x ({t['files']} files)", "", ""),
        ("slices/s (steady)", f"{t['slices_per_s_steady']:.0f}", ">= 6510", f"<= {ORIGINAL['spark_slices_per_s']}"),
        ("MB/s of samples (steady)", f"{t['mb_per_s_steady']:.0f}", ">= 160", ""),
        *ceiling_rows(r),
        ("file latency p50, real-time pace (Prometheus)", f"{fmt(lat['prometheus_p50_s'], '.3f')} s", "", ""),
        ("file latency p99, real-time pace (Prometheus)", f"{fmt(lat['prometheus_p99_s'], '.3f')} s",
         f"<= {TARGETS['latency_p99_s']:.0f} s", ""),
        ("  last slice sent -> spectrum, p50 / p99 / max (per file)",
         f"{lat['to_spectrum_p50_s']:.3f} / {lat['to_spectrum_p99_s']:.3f} / {lat['to_spectrum_max_s']:.3f} s", "", ""),
        ("  first slice sent -> spectrum, p50 / p99 (per file)",
         f"{lat['whole_file_p50_s']:.3f} / {lat['whole_file_p99_s']:.3f} s", "", ""),
        ("FFT stage / pure pyfftw", f"{fft['ratio_stage_to_pyfftw']:.2f}x", f"<= {TARGETS['fft_ratio']}x", ""),
        ("FFT stage / bare FFTW execute", f"{fft['ratio_stage_to_fftw_execute']:.2f}x", "", ""),
        ("FFT stage per 4.19 s file", f"{fft['stage_ms_per_file']:.1f} ms", "", ""),
        ("peak memory per worker", ", ".join(f"{v / 2**20:.0f}" for v in workers.values()) + " MiB", "", ""),
        ("broker disk per hour of data (slices)", f"{fmt(res['broker_gb_per_data_hour'], '.1f')} GB", "", ""),
        ("CPU cores at max pace: broker/workers/producer/others",
         "{broker:.2f} / {workers_total:.2f} / {producer:.2f} / {others:.2f}".format(**{
             "producer": 0.0, **t["cpu_cores"]}), "2 cores", ""),
    ]


def ceiling_rows(r: dict) -> list[tuple[str, str, str, str]]:
    """The box's ceiling and the chain's fraction of it (absent in results from before it)."""
    c, t = r.get("ceiling"), r["throughput"]
    if not c:
        return []
    producer_cores = t["cpu_cores"].get("producer", 0.0)
    return [
        ("  box ceiling: produce-only (librdkafka) / consume-only (aiokafka)",
         f"{c['produce']['mb_per_s']:.0f} / {c['consume']['mb_per_s']:.0f} MB/s", "", ""),
        ("  chain MB/s on the wire / ceiling", f"{t['wire_mb_per_s_steady']:.0f} MB/s = "
         f"{t['fraction_of_ceiling']:.2f} of {c['ceiling_mb_per_s']:.0f}", ">= 0.8", ""),
        *passthrough_rows(r),
        ("  producer CPU per second of data (max pace)",
         f"{1000 * producer_cores / t['realtime_factor_steady']:.1f} core-ms", "", ""),
    ]


def passthrough_rows(r: dict) -> list[tuple[str, str, str, str]]:
    """The transport alone, producing and consuming at once, and the chain's fraction of it."""
    p, t = r.get("passthrough"), r["throughput"]
    if not p:
        return []
    busy = f", box busy {p['box_busy_cores']:.2f} cores"
    return [
        ("  pass-through: librdkafka in, aiokafka out, at once", f"{p['mb_per_s']:.0f} MB/s{busy}", "", ""),
        ("  chain MB/s on the wire / pass-through", f"{t['fraction_of_passthrough']:.2f}", "", ""),
    ]


def format_table(rows) -> str:
    head = ("", "measured", "target", "original (16 vCPUs)")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(4)]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(tuple("-" * w for w in widths)), *map(line, rows)])


def plot_latency(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = r["latency"]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    per_file = np.array(lat["per_file"]) if lat["per_file"] else np.zeros((0, 4))
    if per_file.size:
        ax.plot(per_file[:, 1], per_file[:, 2], ".", color="0.3", label="each file: last slice sent -> spectrum")
        ax.plot(per_file[:, 1], per_file[:, 3], "x", color="0.6", ms=4, label="each file: first slice sent -> spectrum")
    t0 = r["latency_started_at_s"]
    for name, style in (("p50", "-"), ("p99", "--")):
        values = np.array(lat["prometheus_series"].get(name) or np.zeros((0, 2)))
        if values.size:
            ax.plot(values[:, 0] - t0, values[:, 1], style, label=f"{name}, 1-min window (Prometheus)")
    ax.axhline(TARGETS["latency_p99_s"], color="red", lw=0.8, label="target p99")
    ax.set_xlabel("time since the real-time phase started (s)")
    ax.set_ylabel("file latency (s)")
    ax.set_title(f"quax-stream file latency at real-time pace — {r['machine']['cores']} cores, {r['started']}")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
