"""``quax campaign`` on runs of the real chain (broker and workers): three runs produced with their
metadata (two complete, LOs a whole number of bins apart; one without its cavity), analysed from
the live tables (--all, --runs) and from their exports (--exports), with the same result."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from quax_faust.client import fetch_run_average
from quax_faust.exports.campaign import read_campaign
from quax_faust.search.grand import grand_spectrum
from quax_faust.tools import cli
from quax_faust.tools.campaign_cmd import spectrum_of_average
from tests.conftest import campaign_records, produce_runs, write_synthetic_run

pytestmark = pytest.mark.broker
N_FILES, SLICES_PER_FILE = 2, 16


def test_campaign_of_live_runs_equals_that_of_their_exports(make_stack, tmp_path, caplog):
    settings, workers = make_stack(workers=2)
    flags = ["--set", f"web_port_base={settings.web_port_base}", "--set", f"workers={settings.workers}",
             "--set", f"broker={settings.broker}"]
    daq_dir = write_synthetic_run(tmp_path / "daq", N_FILES, SLICES_PER_FILE * settings.slice_len, seed=5)
    records = campaign_records(settings)
    produce_runs(settings, daq_dir, records, N_FILES)

    live = tmp_path / "live.h5"
    assert cli.main(["campaign", "--all", "--out", str(live), *flags]) == 0
    result = read_campaign(live)
    t = result.tables
    assert t["runs_used"]["run"].tolist() == ["step0", "step1"]
    assert t["runs_used"]["n_slices"].tolist() == [N_FILES * SLICES_PER_FILE] * 2
    assert t["runs_used"]["lo_frequency_hz"].tolist() == [records["step0"]["lo_frequency_hz"],
                                                          records["step1"]["lo_frequency_hz"]]
    assert t["runs_left_out"]["run"].tolist() == ["nocavity"]
    assert "its metadata lacks cavity_frequency_hz, loaded_q" in t["runs_left_out"]["reason"][0]
    assert set(t["runs_used"]["source"]) == {"live tables"}
    # The command reads what the views serve: the pure analysis of the same documents.
    served = [spectrum_of_average(fetch_run_average(settings, run)) for run in sorted(records)]
    expected = grand_spectrum(served)
    np.testing.assert_array_equal(t["grand"]["g2"], expected.g2)
    assert np.count_nonzero(np.isfinite(t["grand"]["significance"])) > 1000
    assert t["runs_used"]["noise_ratio"] == pytest.approx(1.0, abs=0.1)

    # The same runs exported by `quax export`, then analysed from the files: the same result.
    exports = []
    for run in records:
        exports.append(str(tmp_path / f"{run}.h5"))
        assert cli.main(["export", "--run", run, "--out", exports[-1], *flags]) == 0
    from_files = tmp_path / "exports.npz"
    assert cli.main(["campaign", "--exports", *exports, "--out", str(from_files), *flags]) == 0
    offline = read_campaign(from_files).tables
    for table in ("grand", "exclusion", "candidates"):
        for name, values in t[table].items():
            np.testing.assert_array_equal(offline[table][name], values, err_msg=f"{table}/{name}")
    assert offline["runs_left_out"]["reason"].tolist() == t["runs_left_out"]["reason"].tolist()

    with caplog.at_level(logging.ERROR, logger="quax"):
        assert cli.main(["campaign", "--runs", "step0", "step9", "--out", str(tmp_path / "x.h5"), *flags]) == 3
    assert "the workers hold no run 'step9' (they hold 3: nocavity, step0, step1)" in caplog.text
