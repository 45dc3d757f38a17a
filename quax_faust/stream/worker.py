"""``quax worker --index K``: one Faust worker of the live chain (the Procfile runs four).

The process-wide preparations happen here, not at import: malloc keeps freed memory for reuse
(malloc.py), the Faust patches are installed and pointed at the agents' source topics
(faust_fixes.py), our topics and the tables' changelogs exist before Faust subscribes.
"""

from __future__ import annotations

import asyncio
import faulthandler
import signal
import sys
from pathlib import Path

from quax_faust.settings import Settings
from quax_faust.stream import faust_fixes, malloc
from quax_faust.stream.app import create_app
from quax_faust.stream.topics import changelog_plan, ensure_topics


def run_worker(settings: Settings, index: int, loglevel: str = "info") -> None:
    """Run worker ``index`` until it is stopped: tables under var_dir/workers/K, web views on
    its web host (settings.worker_host), port web_port_base + K."""
    # The web host is what the assignor advertises to the other workers (Faust's canonical_url):
    # they forward views to the owner of a table partition there. (A bad web_hosts fails here.)
    host = settings.worker_host(index)
    # SIGQUIT: every thread's Python stack to stderr (the log), even with the event loop blocked
    # (mode's SIGUSR1 dump needs a running loop; mode takes SIGUSR2 for itself).
    faulthandler.register(signal.SIGQUIT, all_threads=True)
    malloc.keep_freed_memory()  # multi-MiB fetches and records reuse freed memory
    faust_fixes.install()  # flush really flushes; only processed offsets are committed
    faust_fixes.guard_topics([settings.slices_topic, settings.spectra_topic, settings.metadata_topic])
    app = create_app(settings)
    # Faust subscribes only to topics that exist, and its consumer must see every table changelog
    # at its first metadata request: ours and the changelogs, created and described (idempotent).
    asyncio.run(ensure_topics(settings, extra=changelog_plan(app)))

    datadir = Path(settings.var_dir) / "workers" / str(index)
    datadir.mkdir(parents=True, exist_ok=True)
    app.conf.datadir = datadir
    sys.argv = ["quax-worker", "worker", "--loglevel", loglevel, "--web-host", host,
                "--web-bind", settings.web_bind or host, "--web-port", str(settings.web_port_base + index)]
    app.main()
