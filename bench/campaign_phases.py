"""The campaign's phases after the files are in: recovery of the run-table owner, HDF5 export,
the Spark audit, a dashboard refresh. Each returns a dict for the JSON report.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import psutil

from quax_faust.settings import Settings
from quax_faust.tools.launch import Workers, settings_env

MIB = 2**20


def run_table_owner(workers: Workers) -> int | None:
    """The worker assigned the spectra partition (the one partition of the `runs` table), from
    each worker's /quax/health/ assignments."""
    want = f"{workers.settings.spectra_topic}/0"
    for k in workers.procs:
        doc = workers.health(k)
        if doc and want in doc["assigned"]:
            return k
    return None


def run_view(settings: Settings, k: int, run: str) -> dict | None:
    """The run document as worker k answers it (routed by Faust to the owner), or None."""
    try:
        with urllib.request.urlopen(f"{settings.worker_url(k)}/quax/runs/{run}/", timeout=10) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def answered_run_view(settings: Settings, k: int, run: str, timeout_s: float = 120.0) -> dict | None:
    """Worker k's run document, asked again until it answers (a loaded box may time a request out,
    a rebalance answer 503 while the tables recover); None if it never does within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while (doc := run_view(settings, k, run)) is None and time.monotonic() < deadline:
        time.sleep(1.0)
    return doc


def check_run(settings: Settings, run: str, n_files: int, slices: int) -> dict:
    """Every slice counted once: n_slices == files x slices, file indices exactly 0..n_files-1."""
    doc = answered_run_view(settings, 0, run)
    if doc is None:
        return {"ok": False, "error": f"worker 0 did not answer /quax/runs/{run}/ within 120 s"}
    indices = doc.get("file_indices", [])
    dupes = [i for i, c in Counter(indices).items() if c > 1]
    ok = (doc.get("n_files") == n_files and doc.get("n_slices") == n_files * slices
          and not dupes and indices == list(range(n_files)))
    return {"ok": ok, "n_files": doc.get("n_files"), "n_slices": doc.get("n_slices"),
            "expected_slices": n_files * slices, "duplicate_files": dupes[:10],
            "missing_files": sorted(set(range(n_files)) - set(indices))[:10]}


def wait_full_run(settings: Settings, k: int, run: str, n_files: int, timeout_s: float) -> float:
    """Seconds until worker k's view of run shows n_files files; TimeoutError after timeout_s."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        doc = run_view(settings, k, run)
        if doc and doc.get("n_files") == n_files:
            return time.monotonic() - started
        time.sleep(0.25)
    raise TimeoutError(f"worker {k}: run {run} not back to {n_files} files within {timeout_s} s")


def recover_owner(workers: Workers, run: str, n_files: int, *, lose_store: bool,
                  timeout_s: float = 600.0) -> dict:
    """kill -9 the run-table owner, optionally delete its RocksDB store, restart it at once; the time
    from the kill until its own views answer with the whole run, and who owns the run then."""
    settings = workers.settings
    owner = run_table_owner(workers)
    if owner is None:
        raise RuntimeError("no worker holds the spectra partition (the run tables)")
    store = Path(settings.var_dir) / "workers" / str(owner)
    killed_at = time.monotonic()
    workers.kill(owner)
    if lose_store:
        shutil.rmtree(store, ignore_errors=True)
    workers.start([owner])
    wait_full_run(settings, owner, run, n_files, timeout_s)
    seconds = time.monotonic() - killed_at
    # Most of a quick recovery is the group coordinator waiting session_timeout_s for the dead
    # member before it rebalances; the rest is the table restore.
    return {"worker": owner, "store": "deleted" if lose_store else "kept", "seconds": round(seconds, 1),
            "session_timeout_s": settings.session_timeout_s, "owner_after": run_table_owner(workers)}


def _run_measured(cmd: list[str], env: dict, cwd: Path) -> tuple[int, float, float, str]:
    """Run cmd; (exit code, wall s, peak RSS MiB of it and its children sampled every 0.2 s, output tail)."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = [0]

    def sample() -> None:
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
                peak[0] = max(peak[0], rss)
            except psutil.Error:
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = proc.communicate()[0].decode(errors="replace")
    sampler.join()
    return proc.returncode, time.monotonic() - started, peak[0] / MIB, out[-2000:]


def quax_cmd(settings: Settings) -> tuple[list[str], dict]:
    return [sys.executable, "-m", "quax_faust.tools.cli"], {**os.environ, **settings_env(settings)}


def export_h5(settings: Settings, run: str, out_dir: Path) -> dict:
    """`quax export --out run.h5`: wall time and peak RSS, or skipped if .h5 is not supported yet."""
    cmd, env = quax_cmd(settings)
    out = out_dir / "run.h5"
    code, wall, peak, text = _run_measured(cmd + ["-q", "export", "--run", run, "--out", str(out)], env, out_dir)
    if code != 0 and (".h5" in text or "must be .npz or .csv" in text) and not out.exists():
        return {"skipped": "quax export does not write .h5 yet: " + text.strip().splitlines()[-1]}
    result = {"exit_code": code, "seconds": round(wall, 1), "peak_rss_mib": round(peak, 1),
              "bytes": out.stat().st_size if out.exists() else None}
    if code != 0:
        result["output_tail"] = text[-600:]
    out.unlink(missing_ok=True)
    return result


def spark_verify(settings: Settings, run: str, out_dir: Path) -> dict:
    """`quax verify --from spectra` (Spark recomputes the run from the per-file spectra and compares
    it with the live tables): exit code, wall time, its report."""
    cmd, env = quax_cmd(settings)
    out = out_dir / "spark-verify"
    code, wall, peak, text = _run_measured(
        cmd + ["verify", "--run", run, "--from", "spectra", "--out", str(out)], env, out_dir)
    report = out / "report.json"
    result = {"exit_code": code, "seconds": round(wall, 1), "peak_rss_mib": round(peak, 1),
              "equal": code == 0, "report": json.loads(report.read_text()) if report.exists() else None}
    if code != 0:
        result["output_tail"] = text[-1500:]
    return result


def dashboard_refresh(settings: Settings) -> dict:
    """Time of the dashboard's data fetch (dashboard/feed.py TableFeed.poll): the first poll of a
    page opening on the run (waterfall spectra, metadata of every file) and the next one."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from dashboard.feed import PollRequest, TableFeed
    from dashboard.shaping import run_version

    feed = TableFeed(settings.replace(dashboard_http_timeout_s=60.0))
    t0 = time.perf_counter()
    first = feed.poll(PollRequest(None, None, None, frozenset()))
    t1 = time.perf_counter()
    summary = next(r for r in first.runs if r["run"] == first.run)
    seen = frozenset(f["file_index"] for f in first.files)
    again = feed.poll(PollRequest(None, first.run, run_version(summary), seen))
    t2 = time.perf_counter()
    return {"first_poll_s": round(t1 - t0, 2), "next_poll_s": round(t2 - t1, 3),
            "files_listed": len(first.files), "error": first.error or again.error}
