"""A synthetic haloscope campaign: K runs at stepped LO frequencies, with metadata, optional axions.

Pure numpy/scipy, for tests and docs (docs/analysis.md, "The campaign analysis"). Each run is
the average of N periodograms drawn directly from its distribution, not through an FFT: for
Gaussian noise plus an axion (itself a Gaussian random field) every bin of one periodogram is
exponential with mean B_j (1 + s_j), so the average is B_j (1 + s_j) Gamma(N, 1/N). B is the
receiver passband of core.synth; s_j is the axion's power in bin j over k_B T_sys b: its density
(whole power P_sig on resonance, axion.signal_power_w, times the cavity Lorentzian times the halo
line) as the boxcar periodogram of n_bins-sample slices sees it, the window's leak included
(axion_signal.axion_periodogram_excess): what raw data's slices give. T_sys is flat (the cavity
sits at the mixing-chamber temperature), so the noise baseline carries no Lorentzian.

``raw_campaign_runs`` plans the same campaign for raw data (quax synth-campaign): each run's name,
metadata and the axions in its band, for core.synth to write its files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from quax_faust.core.dsp import frequency_axis_hz
from quax_faust.core.synth import SynthModel, passband_power_gain
from quax_faust.search.axion import Cavity
from quax_faust.search.axion_signal import Axion, axion_periodogram_excess, axions_in_band
from quax_faust.search.run_excess import RunSpectrum

QUAX_LIKE_CAVITY = Cavity(cavity_frequency_hz=10.4e9, loaded_q=1e5, coupling_beta=1.0, b_field_t=8.0,
                          volume_m3=1e-4, form_factor=0.5, t_sys_k=2.0)
"""A QUAX-like copper-to-superconducting cavity at 10.4 GHz (haloscope.md section 7, between A and C)."""


@dataclass(frozen=True)
class CampaignPlan:
    """Where and how long each run of a synthetic campaign looks."""

    n_runs: int = 12
    first_lo_hz: float = 10.4e9
    lo_step_bins: int = 77
    """LO step between runs in whole bins (77 x 651 Hz = 50 kHz, half a linewidth at Q_L = 1e5)."""
    cavity_offset_hz: float = 200e3
    """Cavity resonance minus LO, Hz: where in the baseband the cavity sits (off the DC bins,
    which are not used, with its Lorentzian inside the used band)."""
    n_bins: int = 3072
    sample_rate_hz: float = 2e6
    n_slices: int = 2_344_000
    """Slices averaged per run (one hour at 651 Hz bins)."""
    cavity: Cavity = QUAX_LIKE_CAVITY
    """Every run's cavity; its resonance is replaced by LO + cavity_offset_hz."""

    @property
    def bin_width_hz(self) -> float:
        return self.sample_rate_hz / self.n_bins

    def lo_frequencies_hz(self) -> np.ndarray:
        """(n_runs,) LO of each run, Hz."""
        return self.first_lo_hz + np.arange(self.n_runs) * self.lo_step_bins * self.bin_width_hz

    def metadata(self, run_index: int) -> dict[str, float]:
        """Run run_index's metadata fields (quax_faust.core.run_meta names and units)."""
        lo = float(self.lo_frequencies_hz()[run_index])
        cavity = replace(self.cavity, cavity_frequency_hz=lo + self.cavity_offset_hz)
        return {"lo_frequency_hz": lo, "sample_rate_hz": self.sample_rate_hz, **vars(cavity)}


def synthetic_campaign(plan: CampaignPlan | None = None, axions: Sequence[Axion] = (), seed: int = 0,
                       run_prefix: str = "run") -> list[RunSpectrum]:
    """The runs of a campaign, "{run_prefix}{index:03d}", reproducible from seed (plan None:
    CampaignPlan()'s defaults)."""
    plan = CampaignPlan() if plan is None else plan
    baseband = frequency_axis_hz(plan.n_bins, plan.sample_rate_hz)
    passband = passband_power_gain(baseband, SynthModel(sample_rate_hz=plan.sample_rate_hz))
    runs = []
    for index in range(plan.n_runs):
        metadata = plan.metadata(index)
        cavity = Cavity.from_metadata(metadata)
        excess = sum((axion_periodogram_excess(metadata["lo_frequency_hz"], plan.n_bins, plan.sample_rate_hz, cavity,
                                               axion) for axion in axions), np.zeros(plan.n_bins))
        expected = passband * (1 + excess)
        rng = np.random.default_rng([seed, index])
        mean = expected * rng.gamma(plan.n_slices, 1.0 / plan.n_slices, plan.n_bins)
        runs.append(RunSpectrum(f"{run_prefix}{index:03d}", mean, plan.n_slices, plan.sample_rate_hz, metadata))
    return runs


@dataclass(frozen=True)
class RawRun:
    """One run of a raw synthetic campaign: what quax synth-campaign writes into DIR/<name>/."""

    name: str
    metadata: dict[str, float]
    """Its run metadata (quax_faust.core.run_meta names): LO, sample rate, cavity at LO + offset."""
    axions: tuple[Axion, ...]
    """The injected axions whose line reaches into this run's band LO +- fs/2."""
    seed: int
    """Seed of its noise (core.synth.synth_file): every run has its own."""


def raw_campaign_runs(plan: CampaignPlan, axions: Sequence[Axion] = (), seed: int = 0,
                      run_prefix: str = "run") -> list[RawRun]:
    """The runs "{run_prefix}{index:03d}" of a campaign for raw data (plan.n_slices unused: the
    files written set N), each with the axions in its band and its own noise seed from seed."""
    runs = []
    for index in range(plan.n_runs):
        metadata = plan.metadata(index)
        run_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        runs.append(RawRun(f"{run_prefix}{index:03d}", metadata,
                           axions_in_band(axions, metadata["lo_frequency_hz"], plan.sample_rate_hz), run_seed))
    return runs
