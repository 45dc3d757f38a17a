"""docs/dashboard.md: the health strip turns amber "NO NEW FILES since ..." once the shown run has
not grown for three file periods (dashboard_behind_s), not before; the timeline keeps two hours."""

import types

from dashboard.page import LiveDashboard
from quax_faust.settings import Settings


def quiet_since(last_completed_at_s, now, run="r"):
    page = types.SimpleNamespace(run=run, settings=Settings(),
                                 run_summary=None if last_completed_at_s is None else
                                 {"last_completed_at_s": last_completed_at_s})
    return LiveDashboard._quiet_since(page, now)


def test_no_new_files_after_three_file_periods_and_not_before():
    period = Settings().dashboard_behind_s  # 4.194 s, one file
    last = 1_000_000.0
    assert quiet_since(last, last + 2 * period) is None
    assert quiet_since(last, last + 3 * period - 0.01) is None
    assert quiet_since(last, last + 3 * period + 0.01) == last  # "since" the run last grew
    assert quiet_since(None, last + 100) is None  # no run shown: nothing to say
    assert quiet_since(last, last + 100, run=None) is None


def test_the_real_time_factor_timeline_keeps_two_hours():
    from dashboard.page import THROUGHPUT_POINTS

    assert THROUGHPUT_POINTS * Settings().dashboard_refresh_s == 2 * 3600  # one point per poll
