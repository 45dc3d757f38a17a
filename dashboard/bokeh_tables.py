"""What the pages' DataTables need beyond Bokeh's defaults."""

from __future__ import annotations

from bokeh.models import CustomJS, DataTable


def redraw_on_new_data(table: DataTable) -> None:
    """Redraw the table whenever its source's data is replaced. BokehJS (3.9) redraws a table only
    when the number of its rows changes, so new values in as many rows as before stayed unseen: a
    grown run's N on the campaign page, a candidate's growing significance on the live page."""
    table.source.js_on_change("data", CustomJS(args={"table": table}, code="table.view.change.emit()"))
