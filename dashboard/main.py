"""``bokeh serve dashboard``: the QUAX pages (settings from QUAX_* environment variables).

``/dashboard`` (or ``?page=live``): the live spectrum, one LiveDashboard per browser session
(dashboard/page.py). ``/dashboard?page=campaign``: the live campaign, one CampaignDashboard
(dashboard/campaign_page.py). See docs/dashboard.md.
"""

import html

from bokeh.io import curdoc
from bokeh.models import Div

from dashboard.campaign_page import CampaignDashboard
from dashboard.page import LiveDashboard
from quax_faust.settings import Settings

PAGES = {"live": LiveDashboard, "campaign": CampaignDashboard}


def requested_page(arguments: dict[str, list[bytes]]) -> str:
    """The ``page`` argument of the session's URL ("live" without one)."""
    values = arguments.get("page") or [b"live"]
    return values[0].decode(errors="replace")


doc = curdoc()
context = doc.session_context
page = requested_page(context.request.arguments if context is not None and context.request is not None else {})
if page in PAGES:
    PAGES[page](doc, Settings.from_env())
else:
    doc.add_root(Div(text=f"no page {html.escape(repr(page))}: ask for ?page=live (the live spectrum) or ?page=campaign"))
