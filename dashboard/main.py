"""``bokeh serve dashboard``: the QUAX live spectrum page (settings from QUAX_* environment variables).

One LiveDashboard per browser session; see dashboard/page.py for the panels and docs/dashboard.md.
"""

from bokeh.io import curdoc

from dashboard.page import LiveDashboard
from quax_faust.settings import Settings

LiveDashboard(curdoc(), Settings.from_env())
