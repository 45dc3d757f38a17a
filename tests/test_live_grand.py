"""The live campaign's incremental grand spectrum (search/live_grand.py), pure logic (no broker).

Whatever the order runs arrive in, grow, change or leave, ``LiveGrand`` must give exactly what the
offline analysis gives on the same runs sorted by id (``quax campaign --all``), every array equal
bit for bit, while redoing only the changed run's work. Synthetic campaigns of 12 runs of 3072 bins
(search/synthetic_campaign.py), seeded.
"""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest

from quax_faust.search import grand as grand_module
from quax_faust.search.campaign_result import LIVE, analyse
from quax_faust.search.grand import GrandSpectrum, grand_spectrum
from quax_faust.search.live_grand import LiveGrand
from quax_faust.search.run_excess import CampaignConfig, RunSpectrum
from quax_faust.search.synthetic_campaign import Axion, CampaignPlan, synthetic_campaign

PLAN = CampaignPlan(n_runs=12)
CONFIG = CampaignConfig()
SLICES_PER_FILE = 2730
ARRAYS = [f.name for f in fields(GrandSpectrum) if f.type == "np.ndarray"]


def assert_same_grand(live: GrandSpectrum, offline: GrandSpectrum) -> None:
    """Every array equal (NaN where NaN), the same runs on the same grid, the same left out."""
    assert len(ARRAYS) == 10
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(live, name), getattr(offline, name), err_msg=name)
    assert live.first_grid_index == offline.first_grid_index
    assert live.bin_width_hz == offline.bin_width_hz or np.isnan(live.bin_width_hz) and np.isnan(offline.bin_width_hz)
    assert live.left_out == offline.left_out
    assert [(u.run, u.lo_frequency_hz, u.cavity, u.n_slices, u.live_time_s, u.grid_start, u.noise_ratio)
            for u in live.runs] == [(u.run, u.lo_frequency_hz, u.cavity, u.n_slices, u.live_time_s, u.grid_start,
                                     u.noise_ratio) for u in offline.runs]
    assert all(a.response is b.response for a, b in zip(live.runs, offline.runs))


def assert_matches_offline(live: LiveGrand, runs: dict[str, RunSpectrum]) -> GrandSpectrum:
    assert live.runs == sorted(runs)
    result = live.grand()
    assert_same_grand(result, grand_spectrum([runs[name] for name in sorted(runs)], CONFIG))
    return result


def next_file(spectrum: RunSpectrum, rng: np.random.Generator) -> RunSpectrum:
    """The run after one more file: SLICES_PER_FILE more slices, its average drawn again."""
    n = spectrum.n_slices + SLICES_PER_FILE
    return replace(spectrum, mean=spectrum.mean * rng.gamma(n, 1.0 / n, spectrum.mean.size), n_slices=n)


@pytest.fixture(scope="module")
def campaign() -> dict[str, RunSpectrum]:
    # A day's worth of the one-hour plan would be slow to draw for nothing: runs of a few files.
    plan = replace(PLAN, n_slices=3 * SLICES_PER_FILE)
    return {run.run: run for run in synthetic_campaign(plan, seed=11)}


def test_runs_arriving_in_any_order_and_growing_file_by_file_give_the_offline_grand(campaign):
    rng = np.random.default_rng(1)
    live, held = LiveGrand(CONFIG), {}
    for name in rng.permutation(sorted(campaign)):
        live.put(campaign[name])
        held[name] = campaign[name]
        assert_matches_offline(live, held)
    assert len(live.grand().runs) == PLAN.n_runs and not live.grand().left_out
    for _ in range(6):  # new files for random runs, one at a time
        name = sorted(held)[rng.integers(len(held))]
        held[name] = next_file(held[name], rng)
        live.put(held[name])
        result = assert_matches_offline(live, held)
        assert {u.run: u.n_slices for u in result.runs}[name] == held[name].n_slices


def test_a_new_file_redoes_only_its_run(campaign, monkeypatch):
    live = LiveGrand(CONFIG)
    for spectrum in campaign.values():
        live.put(spectrum)
    live.grand()
    excess_of = []
    real_excess = grand_module.excess
    monkeypatch.setattr(grand_module, "excess", lambda s, c: excess_of.append(s.run) or real_excess(s, c))
    grown = next_file(campaign["run005"], np.random.default_rng(2))
    live.put(grown)
    first = live.grand()
    assert excess_of == ["run005"]
    assert live.grand() is first  # nothing changed: nothing redone
    assert excess_of == ["run005"]
    assert_same_grand(first, grand_spectrum(sorted([*campaign.values()][:5] + [grown] + [*campaign.values()][6:],
                                                   key=lambda s: s.run), CONFIG))


def test_a_run_sorting_before_the_grids_origin_arrives_later(campaign):
    """The grid's origin is the first kept run in id order: a run sorting first moves it."""
    # "a-mid" sorts before every runNNN and sits in the middle of the band.
    middle = replace(campaign["run006"], run="a-mid", mean=campaign["run006"].mean[::-1].copy())
    live, held = LiveGrand(CONFIG), {name: campaign[name] for name in sorted(campaign) if name != "run000"}
    for spectrum in held.values():
        live.put(spectrum)
    before = assert_matches_offline(live, held)
    live.put(campaign["run000"])  # the lowest LO, and first in id order
    held["run000"] = campaign["run000"]
    with_first = assert_matches_offline(live, held)
    assert [u.grid_start for u in before.runs[:2]] == [0, PLAN.lo_step_bins]  # run001 set the grid
    assert [u.grid_start for u in with_first.runs[:2]] == [0, PLAN.lo_step_bins]  # now run000
    assert with_first.frequency_hz[0] < before.frequency_hz[0]
    live.put(middle)
    held["a-mid"] = middle
    moved = assert_matches_offline(live, held)
    assert moved.runs[0].run == "a-mid" and moved.runs[0].grid_start == 0
    assert [u.grid_start for u in moved.runs[1:3]] == [-6 * PLAN.lo_step_bins, -5 * PLAN.lo_step_bins]
    assert moved.first_grid_index == with_first.first_grid_index - 6 * PLAN.lo_step_bins
    np.testing.assert_array_equal(moved.frequency_hz[:5], with_first.frequency_hz[:5])


def test_a_run_without_metadata_is_left_out_until_its_metadata_arrives(campaign):
    bare = {k: v for k, v in campaign["run004"].metadata.items() if k not in ("t_sys_k", "loaded_q")}
    live, held = LiveGrand(CONFIG), dict(campaign)
    for spectrum in campaign.values():
        live.put(spectrum)
    held["run004"] = replace(campaign["run004"], metadata=bare)
    live.put(held["run004"])
    result = assert_matches_offline(live, held)
    assert [left.run for left in result.left_out] == ["run004"]
    assert "loaded_q, t_sys_k" in result.left_out[0].reason
    assert "run004" not in [u.run for u in result.runs]
    held["run004"] = campaign["run004"]  # its metadata completed: put again
    live.put(held["run004"])
    result = assert_matches_offline(live, held)
    assert not result.left_out and "run004" in [u.run for u in result.runs]


def test_the_grid_is_settled_again_when_the_run_that_set_it_leaves(campaign):
    """A run off the grid of run000 is left out; without run000 it sets the grid itself, and
    every other run is then off it."""
    shifted = dict(campaign["run001"].metadata, lo_frequency_hz=campaign["run001"].metadata["lo_frequency_hz"] + 200.0)
    live, held = LiveGrand(CONFIG), {"run000": campaign["run000"], "run001": replace(campaign["run001"], metadata=shifted),
                                     "run002": campaign["run002"]}
    for spectrum in held.values():
        live.put(spectrum)
    result = assert_matches_offline(live, held)
    assert [left.run for left in result.left_out] == ["run001"] and "off the campaign's RF grid" in result.left_out[0].reason
    live.remove("run000")
    del held["run000"]
    result = assert_matches_offline(live, held)
    assert [u.run for u in result.runs] == ["run001"]
    assert [left.run for left in result.left_out] == ["run002"] and "(set by run run001)" in result.left_out[0].reason


def test_replace_and_remove_runs_and_errors(campaign):
    live, held = LiveGrand(CONFIG), dict(campaign)
    for spectrum in campaign.values():
        live.put(spectrum)
    held["run003"] = synthetic_campaign(replace(PLAN, n_slices=5 * SLICES_PER_FILE), seed=99)[3]
    live.put(held["run003"])
    assert_matches_offline(live, held)
    for name in ("run011", "run000", "run007"):
        live.remove(name)
        del held[name]
        assert_matches_offline(live, held)
    with pytest.raises(KeyError, match="run 'run007' is not in the live campaign"):
        live.remove("run007")
    with pytest.raises(TypeError, match="takes a RunSpectrum, not dict"):
        live.put({"run": "run001"})
    for name in sorted(held):
        live.remove(name)
    assert live.runs == []
    assert_same_grand(live.grand(), grand_spectrum([], CONFIG))


def test_the_callers_arrays_may_change_after_put(campaign):
    spectrum = replace(campaign["run002"], mean=campaign["run002"].mean.copy(),
                       metadata=dict(campaign["run002"].metadata))
    live = LiveGrand(CONFIG)
    live.put(spectrum)
    spectrum.mean[:] = 1.0  # the caller reuses its buffers
    spectrum.metadata.clear()
    assert_same_grand(live.grand(), grand_spectrum([campaign["run002"]], CONFIG))


def test_the_campaign_equals_the_offline_analysis():
    """Grand spectrum, rescan list (an axion injected where ~8 sigma is expected), exclusion
    curve, false candidates."""
    runs = synthetic_campaign(PLAN, axions=[Axion(PLAN.first_lo_hz + 0.3e6, 80.0)], seed=4)
    live = LiveGrand(CONFIG)
    for spectrum in reversed(runs):
        live.put(spectrum)
    sources = {spectrum.run: f"exports/{spectrum.run}.h5" for spectrum in runs[:6]}
    result = live.campaign(3.355, 0.95, -1.0, sources=sources)
    offline = analyse([(s, sources.get(s.run, LIVE)) for s in runs], CONFIG, 3.355, 0.95, -1.0)
    assert_same_grand(result.grand, offline.grand)
    assert result.entries == offline.entries and result.entries
    assert abs(result.entries[0].frequency_hz - (PLAN.first_lo_hz + 0.3e6)) < 2 * PLAN.bin_width_hz
    for name in ("frequency_hz", "g_limit_gev", "g_sensitivity_gev", "g_radiometer_gev", "ksvz_gev", "dfsz_gev"):
        np.testing.assert_array_equal(getattr(result.curve, name), getattr(offline.curve, name), err_msg=name)
    assert result.curve.confidence == offline.curve.confidence == 0.95
    assert result.expected_false_candidates == offline.expected_false_candidates > 0
    assert result.sources == offline.sources and result.threshold_sigma == 3.355


def test_an_empty_live_campaign_has_an_empty_result():
    """The live service starts with no runs: no error (analyse raises: nothing to analyse)."""
    live = LiveGrand()
    result = live.campaign(3.355)
    assert result.grand.frequency_hz.size == 0 and not result.entries
    assert result.expected_false_candidates == 0.0 and result.curve.g_limit_gev.size == 0
    with pytest.raises(RuntimeError, match="no usable run"):
        analyse([], CampaignConfig(), 3.355)
