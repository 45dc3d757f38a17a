"""The live campaign service (`quax campaign-live`) as `quax doctor` sees it: does it answer at
campaign_port, how many file spectra it has not read yet, records it could not read, runs it leaves
out of the physics. Pure: its /campaign/ answer and the broker's facts in, report.Check lines out.

The chain runs without the service (it only reads the spectra and run-metadata topics), so its
absence is a warning, not a failure.
"""

from __future__ import annotations

from quax_faust.settings import Settings
from quax_faust.tools.doctor.probes import HttpAnswer, KafkaFacts
from quax_faust.tools.doctor.report import FAIL, OK, WARN, Check, TimedOut

LABEL = "campaign service"
DOCS = "docs/analysis.md, \"The live campaign\""


def check_campaign(settings: Settings, answer: HttpAnswer | Exception, facts: KafkaFacts | None,
                   now_s: float) -> list[Check]:
    """``answer``: GET campaign_url/campaign/; ``facts``: the broker's, None if it did not answer;
    ``now_s``: this machine's clock (Unix s)."""
    url = settings.campaign_url + "/campaign/"
    if isinstance(answer, TimedOut):
        return [Check(LABEL, FAIL, str(answer), "it takes the connection but does not answer: look at its log; "
                                                "restart `quax campaign-live` (it resumes from its saved state)")]
    if isinstance(answer, Exception):
        return [Check(LABEL, FAIL, str(answer), "is this machine short of threads or memory?")]
    if answer.status is None:
        return [Check(LABEL, WARN, f"nothing answers at {url} ({answer.error})",
                      "the chain runs without it; for the live grand spectrum and rescan list start "
                      f"`quax campaign-live` (the Procfile's campaign: line), or set QUAX_CAMPAIGN_PORT ({DOCS})")]
    doc = answer.json()
    if answer.status == 503 and isinstance(doc, dict) and doc.get("status") == "starting":
        return [Check(LABEL, WARN, f"{url}: starting, nothing analysed yet ({doc.get('files_folded', 0)} files "
                                   "folded)", "it waits for the broker and the spectra and run-metadata topics: "
                                              "see the broker and topic lines, and its log")]
    if answer.status != 200 or not isinstance(doc, dict) or "next_offsets" not in doc:
        return [Check(LABEL, FAIL, f"{url} answered HTTP {answer.status}, not the campaign document",
                      "another program holds campaign_port: free it or set QUAX_CAMPAIGN_PORT")]

    read = doc["next_offsets"].get("spectra", 0)
    end = facts.ends.get((settings.spectra_topic, 0)) if facts is not None else None
    behind = None if end is None else max(0, end - read)
    age_s = now_s - float(doc.get("updated_at_s") or 0.0)
    text = (f"{url}: {doc.get('status')}, {len(doc.get('runs_used', []))} run(s) used, "
            f"{len(doc.get('runs_left_out', []))} left out, {doc.get('files_folded', 0)} files folded, "
            f"{len(doc.get('candidates', []))} candidate(s); "
            + (f"{behind} file spectra of {settings.spectra_topic} not read yet"
               if behind is not None else "the broker's end of the spectra topic unknown")
            + f"; updated {age_s:.0f} s ago")
    if behind and age_s > max(10.0, 10 * settings.campaign_refresh_s):
        checks = [Check(LABEL, WARN, text, "it has not updated while file spectra wait: look at its log and "
                                           "its CPU; restart `quax campaign-live` (it resumes from its saved state)")]
    else:
        checks = [Check(LABEL, OK, text)]

    rejected = doc.get("rejected") or {}
    if rejected:
        reasons = ", ".join(f"{what} {n}" for what, n in sorted(rejected.items()))
        checks.append(Check("campaign records", WARN, f"{sum(rejected.values())} record(s) it could not read "
                                                      f"({reasons}); they are counted and skipped",
                            "its log names each one's topic and offset"))
    left_out = doc.get("runs_left_out") or []
    if left_out:
        listed = "; ".join(f"{r.get('run')}: {r.get('reason')}" for r in left_out[:5])
        more = f" (and {len(left_out) - 5} more)" if len(left_out) > 5 else ""
        checks.append(Check("campaign runs", WARN, f"{len(left_out)} run(s) left out of the physics: {listed}{more}",
                            "record the missing metadata (`quax produce --run RUN --meta KEY=VALUE`, docs/usage.md, "
                            "\"Run metadata\"): the run enters as soon as its metadata grows"))
    return checks
