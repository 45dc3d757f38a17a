"""The correctness oracle: scipy.signal.welch on the very files that were sent."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quax_faust.core import daq
from quax_faust.client import fetch_run
from quax_faust.settings import Settings
from tests.test_dsp import welch_oracle


def assert_run_matches_oracle(settings: Settings, daq_dir: Path, run: str, indices) -> dict:
    """Every file's spectrum and the run average from the live tables equal Welch's, each slice once."""
    data = fetch_run(settings, run)
    indices = list(indices)
    assert list(data["file_index"]) == indices, "the run holds exactly the files sent"
    all_slices, n_total = [], 0
    for row, k in enumerate(indices):
        x = daq.read_pair(daq.pair_paths(daq_dir, k))
        _, p = welch_oracle(x)
        n_whole = x.shape[0] // settings.slice_len
        assert data["file_n_slices"][row] == n_whole, f"file {k}: slice count"
        assert np.max(np.abs(data["file_mean"][row] - p)) <= 1e-5 * p.mean(), f"file {k}: spectrum"
        all_slices.append(daq.whole_slices(x, settings.slice_len).ravel())
        n_total += n_whole
    assert int(data["n_slices_total"]) == n_total, "every whole slice counted exactly once"
    _, p_run = welch_oracle(np.concatenate(all_slices))
    assert np.max(np.abs(data["run_mean"] - p_run)) <= 1e-5 * p_run.mean(), "run average"
    return data
