"""The week in an hour: a week of DAQ files (144,000 x 4.194 s) through a broker and 4 workers.

    .venv/bin/python bench/campaign.py --files 144000            # the full week (~1 h on a quiet box)
    .venv/bin/python bench/campaign.py --files 3000 --workers 4  # a short version (~2-5 min)

Tiny files (2 slices = 6144 samples each: a worker's per-file state is 3072 bins whatever the
file's length), distinct noise per file (bench/campaign_feed.py, the real producer in its own
process, files written ahead in a thread), the candidate search on (it always is). It records,
prints and writes under bench/results/campaign-<time>/ (campaign.json, campaign.png):

- files/s over time (the workers' quax_files_folded_total every --interval s) and the producer's
  own rate; every worker's RSS over time (check: < 1 GiB, < 5 % growth over the second half);
- RocksDB stores (var/workers/K) and broker log bytes per topic, per file;
- every slice counted once: run view n_slices == files x slices, file_indices == 0..N-1;
- the dashboard's data fetch (dashboard/feed.py TableFeed.poll) on the whole run;
- `quax export --out run.h5` wall time and peak RSS (skipped while .h5 is not supported);
- `quax verify --from spectra` (Spark recompute == live tables);
- the run-table owner (holder of spectra/0, from /quax/health/) killed -9 and restarted, with its
  store kept and then deleted: seconds until its views answer with the whole run; then --extra
  more files must join the run, each slice once;
- optionally (--profile-s) py-spy samples of the owner and another worker mid-run: top costs.

Disk: the full week needs ~40 GB free (slices, spectra and changelog topics ~7 GB each at 49 KB
per file, the owner's store and a standby copy of file_spectra); --work-dir chooses where.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import campaign_phases as phases  # noqa: E402
from campaign_watch import Watch, files_per_s, folded_series, plot, rss_check  # noqa: E402

from quax_faust.settings import Settings  # noqa: E402
from quax_faust.tools.bench_phases import cpu_name  # noqa: E402
from quax_faust.tools.launch import Broker, Workers, free_port, settings_env, wait_for_run  # noqa: E402

FEED = Path(__file__).resolve().parent / "campaign_feed.py"
FILE_S = 2**23 / 2e6  # a real DAQ file: 4.194 s


def start_feed(settings: Settings, root: Path, run: str, first: int, n_files: int, slices: int,
               chunk: int, log: Path) -> subprocess.Popen:
    import os

    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(FEED), "--dir", str(root), "--run", run, "--files", str(n_files),
           "--first", str(first), "--slices", str(slices), "--chunk", str(chunk)]
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def feed_summary(log: Path) -> dict:
    for line in reversed(log.read_text().splitlines()):
        if line.startswith('{"summary"'):
            return json.loads(line)["summary"]
    raise RuntimeError(f"the feed gave no summary; see {log}")


def profile(pids: dict[int, int], seconds: float, out_dir: Path) -> dict:
    """py-spy record (collapsed stacks) of each pid for seconds; the top self and inclusive frames."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    procs = {k: subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "50",
                                  "--format", "raw", "-o", str(out_dir / f"profile-worker-{k}.txt")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for k, pid in pids.items()}
    result = {}
    for k, proc in procs.items():
        proc.wait()
        path = out_dir / f"profile-worker-{k}.txt"
        if path.exists():
            result[k] = top_frames(path.read_text())
    return result


def top_frames(collapsed: str, n: int = 15) -> dict:
    """From py-spy's collapsed stacks: busy share of the sampled period, % of samples per leaf
    function (self), per package of the leaf (quax_faust/<tier>, numpy, aiokafka, ...) and per
    quax_faust function anywhere in the stack (inclusive)."""
    own, package, ours, total = Counter(), Counter(), Counter(), 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = []
        for frame in stack.split(";"):
            name, _, where = frame.partition(" (")
            path = where.rsplit(":", 1)[0]
            frames.append((name, path))
        c = int(count)
        total += c
        name, path = frames[-1]
        own[f"{name} ({path.rsplit('/', 1)[-1]})"] += c
        parts = path.split("/")
        package[("/".join(parts[:2]) if parts[0] == "quax_faust" else parts[0]) if len(parts) > 1 else path] += c
        for f in {f"{nm} ({p})" for nm, p in frames if p.startswith("quax_faust/")}:
            ours[f] += c
    share = lambda c: [(f, round(100 * v / total, 1)) for f, v in c.most_common(n)]  # noqa: E731
    return {"samples": total, "self_percent": share(own), "self_by_package_percent": share(package),
            "quax_inclusive_percent": share(ours)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=144_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slices", type=int, default=2, help="slices per file (2 x 3072 samples)")
    parser.add_argument("--chunk", type=int, default=1000, help="files written and sent per batch by the feed")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between samples")
    parser.add_argument("--extra", type=int, default=20, help="files sent after the recoveries")
    parser.add_argument("--profile-s", type=float, default=0, help="py-spy the workers this long mid-run")
    parser.add_argument("--skip", action="append", default=[], choices=["export", "spark", "recovery", "dashboard"])
    parser.add_argument("--work-dir", type=Path, default=None, help="broker logs, stores, files (default /tmp)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = args.out / f"campaign-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="quax-campaign-", dir=args.work_dir))
    run = "week"
    broker = Broker(port=free_port(2), data_dir=tmp / "kafka").start()
    settings = Settings.from_env().replace(broker=broker.bootstrap, var_dir=tmp / "var", workers=args.workers,
                                  web_port_base=free_port(args.workers), slices_per_message=args.slices,
                                  producer_metrics_port=0)
    workers = Workers(settings, tmp / "logs").start()
    report: dict = {"files": args.files, "workers": args.workers, "slices_per_file": args.slices,
                    "started_utc": stamp, "cpu": cpu_name(), "work_dir": str(tmp)}
    watch = None
    marks: list[tuple[str, float]] = []
    mark = lambda name: marks.append((name, time.time()))  # noqa: E731
    try:
        workers.wait_assigned()
        watch = Watch({k: settings.worker_url(k) for k in range(args.workers)},
                      lambda: {k: p.pid for k, p in workers.procs.items()},
                      {k: Path(settings.var_dir) / "workers" / str(k) for k in range(args.workers)},
                      tmp / "kafka" / "log", interval_s=args.interval)
        watch.start()
        started = time.time()
        feed = start_feed(settings, tmp / "daq", run, 0, args.files, args.slices, args.chunk, out_dir / "feed.log")
        if args.profile_s:
            wait_for_run(settings, run, args.files // 3, timeout_s=24 * 3600)
            owner = phases.run_table_owner(workers)
            other = next(k for k in workers.procs if k != owner)
            report["profile"] = profile({k: workers.procs[k].pid for k in (owner, other)}, args.profile_s, out_dir)
            report["profile"]["owner"] = owner
        summary = wait_for_run(settings, run, args.files, timeout_s=24 * 3600)
        fold_end = time.time()
        if feed.wait() != 0:
            raise RuntimeError(f"feed exited with {feed.returncode}; see {out_dir / 'feed.log'}")
        report["feed"] = feed_summary(out_dir / "feed.log")
        fold_samples = [s for s in watch.samples if s["t"] <= fold_end]
        report["fold"] = fold_figures(fold_samples, started, fold_end, args.files, summary)
        report["rss"] = rss_check(fold_samples)
        report["disk"] = disk_figures(watch.sample(with_disk=True), args.files, settings)
        report["every_slice_once"] = phases.check_run(settings, run, args.files, args.slices)
        report["run_table_owner"] = phases.run_table_owner(workers)
        print_progress(report)
        mark("dashboard")
        if "dashboard" not in args.skip:
            report["dashboard"] = phases.dashboard_refresh(settings)
        mark("export")
        if "export" not in args.skip:
            report["export_h5"] = phases.export_h5(settings, run, out_dir.resolve())
        mark("spark verify")
        if "spark" not in args.skip:
            report["spark_verify"] = phases.spark_verify(settings, run, out_dir.resolve())
        n_files = args.files
        if "recovery" not in args.skip:
            report["recovery"] = []
            for lose_store in (False, True):
                mark("kill -9 owner" + (", store deleted" if lose_store else ""))
                try:
                    report["recovery"].append(phases.recover_owner(workers, run, n_files, lose_store=lose_store,
                                                                   timeout_s=3600))
                except TimeoutError as exc:
                    report["recovery"].append({"store": "deleted" if lose_store else "kept", "error": str(exc)})
                    workers.wait_assigned(timeout_s=3600)
            if args.extra:
                mark(f"+{args.extra} files")
                extra = start_feed(settings, tmp / "daq", run, n_files, args.extra, args.slices,
                                   args.chunk, out_dir / "feed-extra.log")
                extra.wait()
                n_files += args.extra
                wait_for_run(settings, run, n_files, timeout_s=600)
                report["after_recovery"] = phases.check_run(settings, run, n_files, args.slices)
        report["candidates"] = candidates_summary(settings, run)
    finally:
        try:
            if watch is not None:
                watch.stop()
                report["samples"] = watch.samples
                (out_dir / "campaign.json").write_text(json.dumps(report, indent=1, default=str))
                if len(watch.samples) > 2:
                    report["phases"] = marks
                plot(watch.samples, out_dir / "campaign.png", f"{args.files} files, {args.workers} workers", marks)
        finally:
            workers.stop()
            broker.stop()
    print_report(report, out_dir)
    shutil.rmtree(tmp, ignore_errors=True)


def fold_figures(samples: list[dict], started: float, fold_end: float, n_files: int, summary: dict) -> dict:
    t, folded = folded_series(samples)
    _, rate = files_per_s(t, folded)
    wall = fold_end - started
    return {"wall_s": round(wall, 1), "files_per_s": round(n_files / wall, 1),
            "files_per_s_15s_p10_p50_p90": [round(float(np.nanpercentile(rate, q)), 1) for q in (10, 50, 90)]
            if np.isfinite(rate).any() else None,
            "week_at_this_rate_min": round(144_000 / (n_files / wall) / 60, 1),
            "realtime_factor": round(n_files * FILE_S / wall), "run_n_slices": summary["n_slices"]}


def disk_figures(sample: dict, n_files: int, settings: Settings) -> dict:
    stores = sample["store_bytes"]
    topics = sample["topic_bytes"]
    changelogs = {t: b for t, b in topics.items() if t.endswith("-changelog")}
    return {"store_bytes": stores, "stores_bytes_per_file": round(sum(stores.values()) / n_files),
            "topic_bytes": topics, "changelog_bytes_per_file": {t: round(b / n_files) for t, b in changelogs.items()},
            "all_topics_bytes_per_file": round(sum(topics.values()) / n_files)}


def candidates_summary(settings: Settings, run: str) -> dict:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{settings.worker_url(0)}/quax/runs/{run}/candidates/", timeout=30) as r:
            doc = json.loads(r.read())
        return {"searched_file_index": doc.get("searched_file_index"),
                "n_candidates": len(doc.get("candidates", []))}
    except OSError as exc:
        return {"error": str(exc)}


def print_progress(report: dict) -> None:
    fold, feed = report["fold"], report["feed"]
    print(f"{report['files']} files in {fold['wall_s']} s = {fold['files_per_s']} files/s "
          f"(a week at this rate: {fold['week_at_this_rate_min']} min); producer alone "
          f"{feed['producer_files_per_s']} files/s, waited {feed['waited_for_writer_s']} s for the writer",
          flush=True)


def print_report(report: dict, out_dir: Path) -> None:
    lines = [f"files/s: {report.get('fold')}", f"producer: {report.get('feed')}"]
    rss = report.get("rss")
    if rss:
        lines.append("RSS (MiB) peak / mid / end, growth over 2nd half: " + "; ".join(
            f"w{k} {v['peak_mib']:.0f}/{v['mid_mib']:.0f}/{v['end_mib']:.0f} {100 * v['growth_second_half']:+.1f}%"
            for k, v in rss["workers"].items()) + f"  -> {'OK' if rss['ok'] else 'FAIL'}")
    disk = report.get("disk")
    if disk:
        lines.append(f"disk per file: stores {disk['stores_bytes_per_file']} B, all topics "
                     f"{disk['all_topics_bytes_per_file']} B, changelogs {disk['changelog_bytes_per_file']}")
    for key in ("every_slice_once", "dashboard", "export_h5", "recovery", "after_recovery", "candidates"):
        if key in report:
            lines.append(f"{key}: {report[key]}")
    if "spark_verify" in report:
        sv = report["spark_verify"]
        errors = [ln for ln in sv.get("output_tail", "").splitlines() if "Error" in ln or "ERROR" in ln]
        why = f" -- {errors[-1][-300:]}" if not sv["equal"] and errors else ""
        lines.append(f"spark_verify: equal={sv['equal']} {sv['seconds']} s peak {sv['peak_rss_mib']} MiB{why}")
    for k, prof in report.get("profile", {}).items():
        if isinstance(prof, dict):
            lines.append(f"profile worker {k} ({prof['samples']} samples at 50/s), self %: {prof['self_percent'][:10]}"
                         f"\n  by package: {prof['self_by_package_percent'][:8]}"
                         f"\n  quax inclusive: {prof['quax_inclusive_percent'][:10]}")
    print("\n".join(lines))
    print(f"written: {out_dir / 'campaign.json'}, {out_dir / 'campaign.png'}")


if __name__ == "__main__":
    main()
