"""The spectrum is Welch's average: checked against scipy.signal.welch, tones and white noise."""

import numpy as np
import pytest
import scipy.signal

from quax_faust.core import dsp

FS = 2e6
L = 3072


def welch_oracle(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f, p = scipy.signal.welch(x, fs=FS, window="boxcar", nperseg=L, noverlap=0, detrend=False,
                              return_onesided=False, scaling="density")
    return np.fft.fftshift(f), np.fft.fftshift(p)


def file_mean(x: np.ndarray, **kw) -> np.ndarray:
    n = x.shape[0] // L
    s = dsp.power_sums(x[: n * L].reshape(n, L), FS, **kw)
    assert s.n_slices == n
    return dsp.mean_and_std(s.power_sum, s.power_sumsq, s.n_slices)[0]


@pytest.mark.parametrize("n_samples", [L * 40, L * 40 + 2048, 65536, L * 131 + 7])
def test_file_mean_equals_welch(n_samples):
    rng = np.random.default_rng(n_samples)
    x = (rng.standard_normal(n_samples) + 1j * rng.standard_normal(n_samples)).astype(np.complex64)
    x *= np.linspace(0.5, 2.0, n_samples).astype(np.float32)  # not stationary: a real test of the mean
    f, p = welch_oracle(x)
    np.testing.assert_allclose(dsp.frequency_axis_hz(L, FS), f)
    assert np.max(np.abs(file_mean(x) - p)) <= 1e-5 * p.mean()


def test_block_size_and_mask_do_not_change_the_result():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((100, L)) + 1j * rng.standard_normal((100, L))).astype(np.complex64)
    a = dsp.power_sums(x, FS, block_rows=64)
    b = dsp.power_sums(x, FS, block_rows=7)
    np.testing.assert_allclose(a.power_sum, b.power_sum, rtol=1e-12)
    mask = np.zeros(100, bool)
    mask[10:37] = True
    c = dsp.power_sums(x, FS, counted=mask)
    d = dsp.power_sums(x[10:37], FS)
    assert c.n_slices == 27
    np.testing.assert_allclose(c.power_sum, d.power_sum, rtol=1e-12)
    np.testing.assert_allclose(c.power_sumsq, d.power_sumsq, rtol=1e-12)


def float64_sums(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The straightforward computation: numpy's FFT and the sums, all in float64."""
    p = np.abs(np.fft.fft(x.astype(np.complex128), axis=1)) ** 2 * dsp.psd_scale(L, FS)
    return np.fft.fftshift(p.sum(axis=0)), np.fft.fftshift((p * p).sum(axis=0))


def record_view(x: np.ndarray) -> np.ndarray:
    """x as a worker gets it: a read-only view into a record's bytes, at an odd address."""
    view = np.frombuffer(b"\0" + x.astype("<c8").tobytes(), dtype="<c8", offset=1).reshape(x.shape)
    assert not view.flags.aligned and not view.flags.writeable
    return view


@pytest.mark.parametrize("block_rows", [1, 5, 16, 64, 200])
def test_unaligned_views_and_masks_across_block_edges_match_float64(block_rows):
    rng = np.random.default_rng(block_rows)
    n = 3 * dsp.GROUP_ROWS + 7  # neither whole blocks nor whole summing groups
    x = (rng.standard_normal((n, L)) + 1j * rng.standard_normal((n, L))).astype(np.complex64)
    x *= np.linspace(0.1, 3.0, n, dtype=np.float32)[:, None]
    counted = rng.random(n) < 0.6
    counted[16:40] = False  # whole blocks with nothing counted (at 1, 5 and 16 rows) are skipped
    counted[[0, n - 1]] = True
    x[~counted] = np.nan  # uncounted slices never reach the sums
    s = dsp.power_sums(record_view(x), FS, counted=counted, block_rows=block_rows)
    assert s.n_slices == int(counted.sum())
    ref_sum, ref_sumsq = float64_sums(x[counted])
    # float32 FFT: ~1e-7 relative per periodogram where it is large, more in its dips; squared, twice
    np.testing.assert_allclose(s.power_sum, ref_sum, rtol=1e-6)
    np.testing.assert_allclose(s.power_sumsq, ref_sumsq, rtol=3e-6)
    # The same numbers as the counted slices alone, in aligned memory, in other blocks.
    alone = dsp.power_sums(np.ascontiguousarray(x[counted]), FS, block_rows=block_rows)
    np.testing.assert_allclose(s.power_sum, alone.power_sum, rtol=1e-12)
    np.testing.assert_allclose(s.power_sumsq, alone.power_sumsq, rtol=1e-12)


def test_nothing_counted_is_no_slices():
    x = np.full((40, L), np.nan, np.complex64)
    s = dsp.power_sums(x, FS, counted=np.zeros(40, bool))
    assert s.n_slices == 0
    np.testing.assert_array_equal(s.power_sum, 0.0)
    np.testing.assert_array_equal(s.power_sumsq, 0.0)


def test_tone_lands_in_its_bin_with_its_power():
    bin_hz = FS / L
    k = 200  # bins above DC
    amplitude = 0.5
    t = np.arange(L * 20) / FS
    x = (amplitude * np.exp(2j * np.pi * k * bin_hz * t)).astype(np.complex64)
    mean = file_mean(x)
    freq = dsp.frequency_axis_hz(L, FS)
    peak = int(np.argmax(mean))
    assert freq[peak] == pytest.approx(k * bin_hz)
    # A bin-centred tone of amplitude A puts A**2 of power into one bin: density A**2 / bin width.
    assert mean[peak] == pytest.approx(amplitude**2 / bin_hz, rel=1e-5)
    assert mean.sum() * bin_hz == pytest.approx(amplitude**2, rel=1e-5)  # Parseval


def test_lo_frequency_offsets_the_axis():
    f = dsp.frequency_axis_hz(L, FS, lo_frequency_hz=10.5e9)
    assert f[L // 2] == 10.5e9
    assert f[0] == pytest.approx(10.5e9 - FS / 2)
    assert f[1] - f[0] == pytest.approx(FS / L)


def test_white_noise_is_flat_with_one_over_sqrt_n_scatter():
    rng = np.random.default_rng(7)
    n_slices, sigma = 400, 1.0
    x = (rng.standard_normal(n_slices * L) + 1j * rng.standard_normal(n_slices * L)).astype(np.complex64) * sigma
    s = dsp.power_sums(x.reshape(n_slices, L), FS)
    mean, std = dsp.mean_and_std(s.power_sum, s.power_sumsq, s.n_slices)
    level = 2 * sigma**2 / FS  # complex noise, variance 2 sigma**2 spread over FS Hz
    assert mean.mean() == pytest.approx(level, rel=0.01)
    # Each periodogram bin is exponential (std = mean): the average over N scatters by 1/sqrt(N).
    assert np.std(mean / level) == pytest.approx(1 / np.sqrt(n_slices), rel=0.1)
    assert np.median(std / mean) == pytest.approx(1.0, rel=0.05)


def test_merge_moments_equals_pooled_statistics():
    rng = np.random.default_rng(1)
    a, b = rng.exponential(size=(30, 5)), rng.exponential(size=(55, 5))
    m2 = lambda x: ((x - x.mean(0)) ** 2).sum(0)
    merged = dsp.Moments(30, a.mean(0), m2(a)).merge(dsp.Moments(55, b.mean(0), m2(b)))
    both = np.vstack([a, b])
    assert merged.n == 85
    np.testing.assert_allclose(merged.mean, both.mean(0))
    np.testing.assert_allclose(merged.m2, m2(both))
    np.testing.assert_allclose(merged.sem(), both.std(0, ddof=1) / np.sqrt(85))


def test_moments_from_sums_and_from_std_are_numpys_sample_statistics():
    rng = np.random.default_rng(2)
    p = rng.exponential(size=(40, 6))
    from_sums = dsp.Moments.from_sums(40, p.sum(0), (p * p).sum(0))
    np.testing.assert_allclose(from_sums.mean, p.mean(0), rtol=1e-12)
    np.testing.assert_allclose(from_sums.std(), p.std(0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(from_sums.sem(), p.std(0, ddof=1) / np.sqrt(40), rtol=1e-10)
    from_std = dsp.Moments.from_std(40, p.mean(0), p.std(0, ddof=1))
    np.testing.assert_allclose(from_std.m2, from_sums.m2, rtol=1e-10)
    # Merging into nothing is the identity, and copies (the run owns its arrays).
    empty = dsp.Moments(0, np.zeros(6), np.zeros(6))
    alone = empty.merge(from_std)
    assert alone.n == 40 and alone.mean is not from_std.mean
    np.testing.assert_array_equal(alone.m2, from_std.m2)


def test_one_periodogram_has_no_scatter_estimate():
    one = dsp.Moments.from_sums(1, np.full(3, 2.0), np.full(3, 4.0))
    assert np.isnan(one.std()).all() and np.isnan(one.sem()).all()
    # ... but a one-slice file's spectrum says std 0: the spectra topic carries finite numbers only.
    mean, std = dsp.mean_and_std(np.full(3, 2.0), np.full(3, 4.0), 1)
    np.testing.assert_array_equal(mean, 2.0)
    np.testing.assert_array_equal(std, 0.0)
    # Identical slices: sumsq - n*mean**2 cancels to a few ulp either side of 0, never a NaN std.
    p = np.full((3, 3), 0.1)
    cancelled = dsp.Moments.from_sums(3, p.sum(0), (p * p).sum(0))
    assert (cancelled.m2 < 0).all()
    np.testing.assert_array_equal(cancelled.std(), 0.0)
    with pytest.raises(ValueError, match="no slices"):
        dsp.Moments.from_sums(0, np.zeros(3), np.zeros(3))


def test_rejects_real_or_1d_input():
    with pytest.raises(ValueError, match="complex"):
        dsp.power_sums(np.zeros((2, L)), FS)
    with pytest.raises(ValueError, match="2-D"):
        dsp.power_sums(np.zeros(L, np.complex64), FS)
