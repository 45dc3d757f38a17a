"""The expected axion signal in a haloscope: model couplings, cavity response, halo line shape.

Pure numpy/scipy (docs/analysis.md, "The campaign analysis"; shared/haloscope.md sections 1-2).
Frequencies in Hz, temperatures in K, fields in T, volumes in m**3, powers in W, couplings
g_agg in GeV**-1 unless a name says otherwise (``_per_j``: J**-1, the SI form used inside).

    P_sig(f) = g**2 (hbar c)**3 rho_a / (m_a c**2)**2 * (omega_c / mu0) B**2 V C Q_L beta/(1+beta)
               * 1 / (1 + 4 Delta**2),      Delta = (f - f_c) / (f_c / Q_L)

is the power delivered to the receiver by an axion of mass m_a c**2 = h f (its whole line), with
the cavity of resonance f_c, loaded quality factor Q_L and coupling beta [Brubaker 2017, eq. 2].
The formula assumes Q_L much below the axion's Q_a ~ 1.2e6; it is not corrected for Q_L near Q_a.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

PLANCK_J_S = 6.62607015e-34
HBAR_J_S = PLANCK_J_S / (2 * np.pi)
LIGHT_M_S = 299_792_458.0
BOLTZMANN_J_K = 1.380649e-23
ELECTRON_CHARGE_C = 1.602176634e-19
MU0_H_M = 1.25663706212e-6
FINE_STRUCTURE = 7.2973525693e-3

RHO_DM_GEV_CM3 = 0.45
"""Local dark-matter density assumed to be all axions, GeV/cm**3 (the haloscope convention)."""
HALO_VELOCITY_RMS_M_S = 270e3
"""sqrt(<v**2>) of the standard halo in the lab, m/s (= sqrt(1.5) x 220 km/s) [Turner 1990]."""
LAMBDA_MEV = 78.0
"""QCD scale Lambda of g_agg = (alpha/pi) g_gamma m_a / Lambda**2, MeV (HAYSTAC II code: 75.6)."""
G_GAMMA_KSVZ = -0.97
G_GAMMA_DFSZ = 0.36

CAVITY_FIELDS = ("cavity_frequency_hz", "loaded_q", "coupling_beta", "b_field_t", "volume_m3",
                 "form_factor", "t_sys_k")
"""The run-metadata fields (quax_faust.core.run_meta.KNOWN) a run's expected signal needs."""


def rho_dm_j_m3(rho_gev_cm3: float = RHO_DM_GEV_CM3) -> float:
    """Dark-matter density in J/m**3 (0.45 GeV/cm**3 = 7.21e-5 J/m**3)."""
    return rho_gev_cm3 * 1e9 * ELECTRON_CHARGE_C * 1e6


def axion_mass_ev(frequency_hz: np.ndarray | float) -> np.ndarray | float:
    """m_a c**2 in eV of an axion whose rest energy is h f (10.4 GHz: 43.0 micro-eV)."""
    return PLANCK_J_S * np.asarray(frequency_hz, dtype=np.float64) / ELECTRON_CHARGE_C


def model_coupling_gev(frequency_hz: np.ndarray | float, g_gamma: float = G_GAMMA_KSVZ,
                       lambda_mev: float = LAMBDA_MEV) -> np.ndarray:
    """|g_agg| of a benchmark model at axion frequency f: (alpha/pi) |g_gamma| m_a / Lambda**2, GeV**-1.

    KSVZ (g_gamma = -0.97): 1.59e-14 GeV**-1 at 10.4 GHz; DFSZ (0.36) is 0.371 times that.
    """
    mass_gev = axion_mass_ev(frequency_hz) * 1e-9
    return FINE_STRUCTURE / np.pi * abs(g_gamma) * mass_gev / (lambda_mev * 1e-3) ** 2


def ksvz_coupling_gev(frequency_hz: np.ndarray | float) -> np.ndarray:
    """|g_KSVZ|(f), GeV**-1 (the campaign's reference coupling g_ref)."""
    return model_coupling_gev(frequency_hz, G_GAMMA_KSVZ)


def dfsz_coupling_gev(frequency_hz: np.ndarray | float) -> np.ndarray:
    """|g_DFSZ|(f), GeV**-1."""
    return model_coupling_gev(frequency_hz, G_GAMMA_DFSZ)


@dataclass(frozen=True)
class Cavity:
    """What a run's expected signal depends on, in the units of the run-metadata fields."""

    cavity_frequency_hz: float
    loaded_q: float
    coupling_beta: float
    b_field_t: float
    volume_m3: float
    form_factor: float
    t_sys_k: float
    """System noise temperature referred to the cavity output, K."""

    @classmethod
    def from_metadata(cls, fields: Mapping[str, Any]) -> Cavity:
        """The cavity of a run's metadata fields (run_meta names); KeyError naming every missing
        field; ValueError for a value that is not a positive finite number (beta = 0: no signal)."""
        missing = [name for name in CAVITY_FIELDS if fields.get(name) is None]
        if missing:
            raise KeyError(", ".join(missing))
        values, bad = {}, []
        for name in CAVITY_FIELDS:
            try:
                values[name] = float(fields[name])
            except (TypeError, ValueError):
                values[name] = float("nan")
            if not (np.isfinite(values[name]) and values[name] > 0):
                bad.append(f"{name} = {fields[name]!r}")
        if bad:
            raise ValueError(f"not a positive number: {', '.join(bad)}")
        return cls(**values)

    def lorentzian(self, frequency_hz: np.ndarray | float) -> np.ndarray:
        """Cavity response 1/(1 + 4 Delta**2), Delta = (f - f_c)/(f_c/Q_L): 1 on resonance."""
        return cavity_lorentzian(frequency_hz, self.cavity_frequency_hz, self.loaded_q)

    def resonant_power_w(self, g_gev: np.ndarray | float, axion_frequency_hz: np.ndarray | float) -> np.ndarray:
        """P_sig on resonance (Lorentzian = 1) of an axion of coupling g (GeV**-1) and frequency f, W."""
        return signal_power_w(g_gev, axion_frequency_hz, self, on_resonance=True)

    def noise_power_w(self, bandwidth_hz: float) -> float:
        """k_B T_sys b: the noise power in a bandwidth b (Hz), W."""
        return BOLTZMANN_J_K * self.t_sys_k * bandwidth_hz


def cavity_lorentzian(frequency_hz: np.ndarray | float, cavity_frequency_hz: float, loaded_q: float) -> np.ndarray:
    """1/(1 + 4 Delta**2), Delta = (f - f_c)/(f_c/Q_L), dimensionless, shape of frequency_hz."""
    detuning = (np.asarray(frequency_hz, dtype=np.float64) - cavity_frequency_hz) / (cavity_frequency_hz / loaded_q)
    return 1.0 / (1.0 + 4.0 * detuning ** 2)


def signal_power_w(g_gev: np.ndarray | float, axion_frequency_hz: np.ndarray | float, cavity: Cavity, *,
                   rho_gev_cm3: float = RHO_DM_GEV_CM3, on_resonance: bool = False) -> np.ndarray:
    """Axion power delivered to the receiver, W: P_sig(f) of the module docstring.

    g_gev: |g_agg| in GeV**-1; axion_frequency_hz: f = m_a c**2/h (the Lorentzian is taken there
    unless on_resonance). Broadcasts over g and f. TASEH (4.75 GHz, 8 T, 0.234 L, C 0.62,
    Q_L 20 300, beta 2) gives 1.4e-24 W for KSVZ.
    """
    f = np.asarray(axion_frequency_hz, dtype=np.float64)
    g_per_j = np.asarray(g_gev, dtype=np.float64) / (1e9 * ELECTRON_CHARGE_C)
    mass_j = PLANCK_J_S * f
    coupling = g_per_j ** 2 * (HBAR_J_S * LIGHT_M_S) ** 3 * rho_dm_j_m3(rho_gev_cm3) / mass_j ** 2
    c = cavity
    omega_c = 2 * np.pi * c.cavity_frequency_hz
    stored = omega_c / MU0_H_M * c.b_field_t ** 2 * c.volume_m3 * c.form_factor * c.loaded_q
    power = coupling * stored * c.coupling_beta / (1 + c.coupling_beta)
    return power if on_resonance else power * c.lorentzian(f)


# --- the standard-halo line shape ----------------------------------------------------------------

def halo_width_hz(axion_frequency_hz: np.ndarray | float) -> np.ndarray | float:
    """f_a beta**2 = f_a <v**2>/c**2, Hz: the line's scale (8.4 kHz at 10.4 GHz)."""
    return axion_frequency_hz * (HALO_VELOCITY_RMS_M_S / LIGHT_M_S) ** 2


def halo_line_density(offset_hz: np.ndarray, axion_frequency_hz: float) -> np.ndarray:
    """F(f - f_a), 1/Hz: the Maxwell-Boltzmann line of the standard halo [Turner 1990],
    (2/sqrt(pi)) sqrt(x) (3/(f_a beta**2))**1.5 exp(-3x/(f_a beta**2)) for x = f - f_a >= 0, else 0.
    It is a Gamma distribution of shape 3/2 and scale f_a beta**2/3; it integrates to 1."""
    scale = halo_width_hz(axion_frequency_hz) / 3
    x = np.maximum(np.asarray(offset_hz, dtype=np.float64), 0.0)
    return np.where(np.asarray(offset_hz) > 0, np.sqrt(x) * np.exp(-x / scale) / (special.gamma(1.5) * scale ** 1.5), 0.0)


def halo_line_cdf(offset_hz: np.ndarray, axion_frequency_hz: float) -> np.ndarray:
    """Fraction of the line's power below f_a + offset (dimensionless, 0 for offset <= 0)."""
    scale = halo_width_hz(axion_frequency_hz) / 3
    return special.gammainc(1.5, np.maximum(np.asarray(offset_hz, dtype=np.float64), 0.0) / scale)


def matched_filter_bandwidth_hz(axion_frequency_hz: np.ndarray | float) -> np.ndarray | float:
    """1/integral(F**2) = pi f_a beta**2/3, Hz: the bandwidth of the radiometer equation for the
    optimally filtered line (8.8 kHz at 10.4 GHz)."""
    return np.pi * halo_width_hz(axion_frequency_hz) / 3


def binned_line_shape(axion_frequency_hz: float, bin_width_hz: float, n_bins: int,
                      position_in_bin: float | None = None, n_positions: int = 64) -> np.ndarray:
    """The line's power fraction between the edges of each of n_bins rectangular bins, the first
    holding f_a: (n_bins,) float64. Right for bins much narrower than the line's features (a
    whole file's FFT); a slice periodogram's bins see the line through their window instead
    (``windowed_line_shape``, what the campaign analysis uses).

    position_in_bin: where f_a lies in the first bin, 0 (its lower edge) .. 1; None averages over
    a uniform position (n_positions midpoints), as TASEH's filter does.
    Sums to the fraction within n_bins bins (0.94 for 16 bins of 651 Hz at 10.4 GHz).
    """
    positions = (np.arange(n_positions) + 0.5) / n_positions if position_in_bin is None else np.array([position_in_bin])
    edges = (np.arange(n_bins + 1)[None, :] - positions[:, None]) * bin_width_hz
    return np.diff(halo_line_cdf(edges, axion_frequency_hz), axis=1).mean(axis=0)


def windowed_line_shape(axion_frequency_hz: float, bin_width_hz: float, slice_len: int, n_bins: int,
                        first_bin: int = 0, position_in_bin: float | None = None) -> np.ndarray:
    """The line's share of each bin of a boxcar periodogram of slice_len samples: (n_bins,) float64,
    element i for bin first_bin + i, bin 0 holding f_a (first_bin < 0: bins below it; bins are
    periodic: bin q + slice_len is bin q).

    The expected periodogram of a density S is S convolved with the Fejer kernel
    K(d) = sin(pi d L/fs)**2 / (fs L sin(pi d/fs)**2) (L = slice_len, fs = L bin_width_hz), sampled
    at the bin centres; the share of bin q is bin_width_hz times that for S = the halo line. It
    is computed exactly as the kernel's Fourier series: (1/L) sum over |m| < L of
    (1 - |m|/L) phi(2 pi m/fs) exp(2 pi i m (f_a - f_q)/fs), phi(t) = (1 - i t f_a beta**2/3)**-1.5
    the line's characteristic function. The window leaks the line's sharp onset into the bins
    around it, below bin 0 too. Over all slice_len bins the shares sum to 1 (the line folded
    into one period fs, as sampling folds it). Cost ~0.5 ms for 3072 bins.

    position_in_bin: where f_a lies in bin 0, 0 (its lower edge) .. 1; None averages over a
    uniform position (exactly), the filter of the grand spectrum (TASEH's choice).
    """
    offset = None if position_in_bin is None else position_in_bin - 0.5
    shares = _periodogram_line_shares(axion_frequency_hz, bin_width_hz, slice_len, offset)
    return shares[(first_bin + np.arange(n_bins)) % slice_len]


def _periodogram_line_shares(axion_frequency_hz: float, bin_width_hz: float, slice_len: int,
                             offset_bins: float | None) -> np.ndarray:
    """The line's share of bin k = 0 .. slice_len - 1 (modulo slice_len, unshifted) of a boxcar
    periodogram whose bin 0 is centred offset_bins bins below f_a: (slice_len,) float64
    (``windowed_line_shape``; offset_bins None averages it over -0.5 .. 0.5)."""
    length = int(slice_len)
    if length < 1 or not bin_width_hz > 0:
        raise ValueError(f"a periodogram needs slice_len >= 1 and bin_width_hz > 0, not {slice_len}, {bin_width_hz}")
    lag = np.arange(-(length - 1), length)
    scale_cycles = float(halo_width_hz(axion_frequency_hz)) / 3 / (length * bin_width_hz)
    terms = (1 - np.abs(lag) / length) * (1 - 2j * np.pi * scale_cycles * lag) ** -1.5
    if offset_bins is None:
        terms = terms * np.sinc(lag / length)  # the mean of exp(2 pi i m u/L) over u in -1/2 .. 1/2
    else:
        terms = terms * np.exp(2j * np.pi * lag * offset_bins / length)
    folded = np.zeros(length, dtype=np.complex128)
    np.add.at(folded, lag % length, terms)
    return np.fft.fft(folded).real / length
