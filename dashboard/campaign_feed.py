"""What the campaign page reads: the live campaign service's document (``quax campaign-live``).

Blocking HTTP with the dashboard's timeout (dashboard_http_timeout_s); the page calls
``CampaignFeed.poll`` in a worker thread, never on Bokeh's event loop. Each poll asks the service's
small ``/campaign/health`` for the analysis' version, and reads the whole document
(``/campaign/``, a few hundred kB to a few MB) only when that differs from the version shown.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from quax_faust.settings import Settings

from .campaign_shaping import BadDocument, check_document


@dataclass
class CampaignPoll:
    """One poll's answer: a new document, nothing new, the service starting, or an error."""

    time_s: float
    url: str
    """The document's URL (named in the page's status line)."""
    doc: dict[str, Any] | None = None
    """The document, checked; None when the shown version is still current (or on error)."""
    starting: dict[str, Any] | None = None
    """The service answered 503: no analysis yet (its body, e.g. files_folded so far)."""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class CampaignFeed:
    """Reads the service at settings.campaign_url."""

    def __init__(self, settings: Settings):
        self.base = settings.campaign_url
        self.url = self.base + "/campaign/"
        self.timeout_s = settings.dashboard_http_timeout_s

    def poll(self, shown_version: int | None) -> CampaignPoll:
        """The document if its version is not ``shown_version`` (None: always read it)."""
        now = time.time()
        try:
            if shown_version is not None:
                health = self._get(self.base + "/campaign/health")
                if isinstance(health, dict) and health.get("version") == shown_version:
                    return CampaignPoll(now, self.url)
            return CampaignPoll(now, self.url, doc=dict(check_document(self._get(self.url), self.url)))
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")[:300]
            if exc.code == 503:
                return CampaignPoll(now, self.url, starting=_json_or_text(body))
            return CampaignPoll(now, self.url, error=f"{exc.url}: HTTP {exc.code} {body}")
        except BadDocument as exc:
            return CampaignPoll(now, self.url, error=str(exc))
        except (urllib.error.URLError, OSError, ValueError) as exc:  # ValueError: not JSON
            return CampaignPoll(now, self.url, error=f"{self.url}: {getattr(exc, 'reason', exc)}")

    def _get(self, url: str) -> Any:
        with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
            return json.loads(response.read())


def _json_or_text(body: str) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError:
        return {"status": body}
    return parsed if isinstance(parsed, dict) else {"status": str(parsed)}
