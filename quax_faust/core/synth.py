"""Synthetic detector data: complex Gaussian noise through a smooth passband, optional narrow tones.

No public QUAX data exists, so tests and the demo make their own. The model (docs/architecture.md):
white complex noise (std ``noise_std`` per channel) filtered by a smooth, non-flat amplifier
passband whose gain drifts slowly from file to file, plus optional complex tones
``A * exp(2j*pi*f*t)`` with continuous phase across files, and an optional ``PsdExcess``: noise
whose power spectral density is multiplied by (1 + s(f)) on a band, as an axion (itself a Gaussian
random process) adds to it (quax_faust.search.axion_signal computes s).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np
import scipy.fft


@dataclass(frozen=True)
class SynthModel:
    sample_rate_hz: float = 2e6
    noise_std: float = 1.0
    """Standard deviation of each channel (i, q) before the passband, volts."""
    passband_ripple: float = 0.25
    """Peak-to-peak relative variation of the passband power gain across the band."""
    drift_fraction: float = 0.02
    """Relative amplitude of the slow file-to-file gain drift (period drift_period_files)."""
    drift_period_files: float = 50.0
    tones: tuple[tuple[float, float], ...] = field(default=())
    """(frequency Hz, amplitude V) of each injected narrow line."""


def passband_power_gain(freq_hz: np.ndarray, model: SynthModel) -> np.ndarray:
    """Smooth power gain |H(f)|**2 of the simulated amplifier chain (dimensionless)."""
    x = np.asarray(freq_hz) / (model.sample_rate_hz / 2)  # -1 .. 1
    ripple = 1 + model.passband_ripple / 2 * (np.cos(1.7 * np.pi * x + 0.4) * 0.7 + 0.3 * x)
    rolloff = 1 / (1 + (x / 0.92) ** 16)  # anti-alias filter near +-fs/2
    return ripple * rolloff + 0.02


# The passband and each tone's waveform are the same in every file of a run: computed once, they
# make a 2**23-sample file ~3x cheaper, so the demo's DAQ emulator keeps up with real time.
@lru_cache(maxsize=2)
def _fft_bin_gain(n_samples: int, model: SynthModel) -> np.ndarray:
    """passband_power_gain at the FFT bins of an n_samples file: (n_samples,) float64, read-only."""
    gain = passband_power_gain(scipy.fft.fftfreq(n_samples, d=1.0 / model.sample_rate_hz), model)
    gain.flags.writeable = False
    return gain


@lru_cache(maxsize=4)
def _tone_wave(n_samples: int, freq_hz: float, amplitude: float, sample_rate_hz: float) -> np.ndarray:
    """A*exp(2j*pi*f*n/fs) for n = 0 .. n_samples-1: (n_samples,) complex64, read-only."""
    t = np.arange(n_samples, dtype=np.float64) / sample_rate_hz
    wave = (amplitude * np.exp(2j * np.pi * freq_hz * t)).astype(np.complex64)
    wave.flags.writeable = False
    return wave


@dataclass(frozen=True, eq=False)
class PsdExcess:
    """A relative excess s >= -1 of the noise power spectral density on consecutive FFT bins of an
    n_samples file (fs/n_samples Hz apart): the file's noise there has density (1 + s) times the
    passband's. The band may wrap from the last FFT index to 0 (negative to positive frequencies)."""

    n_samples: int
    first_bin: int
    """FFT index (scipy.fft.fftfreq order, 0 .. n_samples - 1) of relative_excess[0]."""
    relative_excess: np.ndarray = field(repr=False)
    """(n_band,) float64, n_band <= n_samples: s at FFT indices first_bin, first_bin + 1, ... mod n_samples."""

    def __post_init__(self) -> None:
        s = np.asarray(self.relative_excess)
        if not 0 <= self.first_bin < self.n_samples or s.ndim != 1 or s.size > self.n_samples:
            raise ValueError(f"PsdExcess: {s.shape} values from FFT index {self.first_bin} do not fit a "
                             f"file of {self.n_samples} samples")
        if not np.all(np.isfinite(s) & (s >= -1)):
            raise ValueError("PsdExcess: the relative excess must be finite and >= -1 (a power density)")

    @cached_property
    def _amplitude(self) -> np.ndarray:
        """sqrt(1 + s), float32: what the noise's Fourier amplitudes are multiplied by."""
        return np.sqrt(1.0 + np.asarray(self.relative_excess, dtype=np.float64)).astype(np.float32)

    def apply(self, spectrum: np.ndarray) -> None:
        """Multiply a file's FFT (n_samples,) in place by sqrt(1 + s) on the band."""
        if spectrum.shape != (self.n_samples,):
            raise ValueError(f"PsdExcess for {self.n_samples}-sample files applied to a spectrum of shape {spectrum.shape}")
        amplitude, first = self._amplitude, self.first_bin
        head = min(amplitude.size, self.n_samples - first)
        spectrum[first:first + head] *= amplitude[:head]
        spectrum[:amplitude.size - head] *= amplitude[head:]


def synth_file(file_index: int, n_samples: int, model: SynthModel, seed: int = 0,
               excess: PsdExcess | None = None) -> np.ndarray:
    """One file of complex64 samples, reproducible from (seed, file_index); new noise in every file.

    excess: the noise's power spectral density times (1 + s) on a band (an axion's signal); the
    same noise realisation as without it, so the two files differ only by the excess."""
    rng = np.random.default_rng([seed, file_index])
    noise = np.empty(n_samples, dtype=np.complex64)
    view = noise.view(np.float32)
    rng.standard_normal(out=view, dtype=np.float32)
    view *= model.noise_std
    spectrum = scipy.fft.fft(noise, workers=2, overwrite_x=True)
    drift = 1 + model.drift_fraction * np.sin(2 * np.pi * file_index / model.drift_period_files)
    spectrum *= np.sqrt(_fft_bin_gain(n_samples, model) * drift).astype(np.float32)
    if excess is not None:
        excess.apply(spectrum)
    samples = scipy.fft.ifft(spectrum, workers=2, overwrite_x=True).astype(np.complex64)
    for freq_hz, amplitude in model.tones:
        # The file starts file_index * n_samples samples into the run: its phase continues the last file's.
        cycles = freq_hz * (file_index * n_samples / model.sample_rate_hz) % 1.0
        samples += _tone_wave(n_samples, freq_hz, amplitude, model.sample_rate_hz) * np.complex64(
            np.exp(2j * np.pi * cycles))
    return samples
