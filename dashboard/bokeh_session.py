"""What both pages need around Bokeh: a feed thread's result handed to the session, and tables
that redraw when their data is replaced."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

from bokeh.document import Document
from bokeh.models import CustomJS, DataTable


def hand_to_session(doc: Document, closed: threading.Event, apply: Callable[[Future], None],
                    future: Future) -> None:
    """A poll's done-callback, in the feed thread: schedule apply(future) on the session's event
    loop (Bokeh models are touched there only). Nothing once the session is closed; a session that
    goes away between the check and the call is marked closed."""
    if closed.is_set():
        return
    try:
        doc.add_next_tick_callback(lambda: apply(future))
    except Exception:  # the session went away between the check and the call
        closed.set()


def redraw_on_new_data(table: DataTable) -> None:
    """Redraw the table whenever its source's data is replaced. BokehJS (3.9) redraws a table only
    when the number of its rows changes, so new values in as many rows as before stayed unseen: a
    grown run's N on the campaign page, a candidate's growing significance on the live page."""
    table.source.js_on_change("data", CustomJS(args={"table": table}, code="table.view.change.emit()"))
