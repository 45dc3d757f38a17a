"""Run exports (quax_faust/exports/): every format read back equals what was written, metadata
included; an existing output is refused without force; an interrupted export leaves no file; the
memory an export takes does not grow with the number of files. No broker: the pages come from a
fake source shaped like client.iter_file_pages."""

from __future__ import annotations

import json
import tracemalloc
import zipfile

import h5py
import numpy as np
import pytest

from quax_faust.client import FilePage, RunAverage, decode_files_page
from quax_faust.core import dsp
from quax_faust.exports import layout, load_run, write_export, write_run
from quax_faust.exports.layout import FILE_COLUMNS

N_BINS, RATE_HZ, LO_HZ = 64, 2e6, 10.4e9


def fake_run(n_files: int, n_bins: int = N_BINS, seed: int = 1, skip=()) -> tuple[RunAverage, list[int]]:
    indices = [i for i in range(n_files) if i not in skip]
    rng = np.random.default_rng(seed)
    mean = rng.exponential(1e-9, n_bins)
    return RunAverage(run="r7", frequency_hz=dsp.frequency_axis_hz(n_bins, RATE_HZ, LO_HZ), mean=mean,
                      std=mean * 1.01, sem=mean / np.sqrt(100 * len(indices)), n_slices=100 * len(indices),
                      file_indices=np.array(indices), sample_rate_hz=RATE_HZ, tail_samples_dropped=7), indices


def file_spectrum(index: int, n_bins: int = N_BINS) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1000 + index)
    mean = rng.exponential(1e-9, n_bins)
    return mean, mean * rng.uniform(0.9, 1.1, n_bins)


def fake_pages(indices: list[int], page_size: int = 5, n_bins: int = N_BINS, fail_after: int | None = None):
    """Pages as client.iter_file_pages yields them; raises after ``fail_after`` pages."""
    for k, start in enumerate(range(0, len(indices), page_size)):
        if fail_after is not None and k == fail_after:
            raise ConnectionError("worker went away")
        chunk = np.array(indices[start:start + page_size], dtype=np.int64)
        spectra = [file_spectrum(int(i), n_bins) for i in chunk]
        columns = {"n_slices": 100 + chunk % 3, "tail_samples": chunk * 0 + 2048,
                   "first_produced_at_s": 1.7e9 + chunk, "last_produced_at_s": 1.7e9 + chunk + 4,
                   "completed_at_s": 1.7e9 + chunk + 4.5, "latency_s": chunk * 0 + 0.5}
        yield FilePage(chunk, np.array([m for m, _ in spectra]).reshape(-1, n_bins),
                       np.array([s for _, s in spectra]).reshape(-1, n_bins), columns)


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_h5_and_npz_round_trip(tmp_path, suffix):
    average, indices = fake_run(23, skip={4, 9})
    meta = layout.describe(average, {"cavity": "Cu-1", "b_field_t": 8.1})
    written = write_run(tmp_path / f"run{suffix}", average, fake_pages(indices), meta)
    assert written["n_files"] == 21 and written["n_slices_in_files"] == sum(100 + i % 3 for i in indices)

    got = load_run(tmp_path / f"run{suffix}")
    assert got.metadata == written and got.run == "r7" and got.metadata["run_metadata"]["cavity"] == "Cu-1"
    assert (got.metadata["nperseg"], got.metadata["window"], got.metadata["power_unit"]) == (N_BINS, "boxcar", "V**2/Hz")
    assert got.metadata["lo_frequency_hz"] == LO_HZ and got.metadata["sample_rate_hz"] == RATE_HZ
    assert got.metadata["quax_version"]
    for name in ("frequency_hz", "mean", "std", "sem"):
        np.testing.assert_array_equal(getattr(got, "frequency_hz" if name == "frequency_hz" else f"run_{name}"),
                                      getattr(average, name))
    np.testing.assert_array_equal(got.file_index, indices)
    for row, i in enumerate(indices):
        mean, std = file_spectrum(i)
        np.testing.assert_array_equal(got.file_mean[row], mean)
        np.testing.assert_array_equal(got.file_std[row], std)
    np.testing.assert_array_equal(got.file_columns["file_n_slices"], [100 + i % 3 for i in indices])
    np.testing.assert_array_equal(got.file_columns["file_completed_at_s"], [1.7e9 + i + 4.5 for i in indices])
    assert set(got.file_columns) == {c.name for c in FILE_COLUMNS.values()}
    assert load_run(tmp_path / f"run{suffix}", spectra=False).file_mean is None


def test_h5_is_chunked_by_files_compressed_and_carries_units(tmp_path):
    average, indices = fake_run(130)
    write_run(tmp_path / "run.h5", average, fake_pages(indices, page_size=50), layout.describe(average))
    with h5py.File(tmp_path / "run.h5") as f:
        assert f["file_mean"].shape == (130, N_BINS) and f["file_mean"].chunks == (64, N_BINS)
        assert f["file_mean"].compression == "gzip" and f["file_std"].shuffle
        assert f["run_mean"].attrs["unit"] == "V**2/Hz" and f["frequency_hz"].attrs["unit"] == "Hz"
        assert f.attrs["run"] == "r7" and f.attrs["nperseg"] == N_BINS and f.attrs["n_files"] == 130
        assert json.loads(f.attrs["run_metadata"]) == {}


def test_npz_is_what_np_load_reads_with_the_layout_of_quax_export(tmp_path):
    average, indices = fake_run(12)
    write_run(tmp_path / "run.npz", average, fake_pages(indices), layout.describe(average))
    with np.load(tmp_path / "run.npz") as npz:
        assert {"frequency_hz", "run_mean", "run_std", "run_sem", "n_slices_total", "file_index", "file_mean",
                "file_std", "file_n_slices", "file_latency_s", "run", "metadata"} <= set(npz.files)
        assert npz["file_mean"].shape == (12, N_BINS) and int(npz["n_slices_total"]) == 1200
        assert json.loads(str(npz["metadata"]))["run"] == str(npz["run"]) == "r7"


def test_csv_run_average_and_long_per_file_csv(tmp_path):
    average, indices = fake_run(7, skip={3})
    written = write_run(tmp_path / "run.csv", average, fake_pages(indices, page_size=4), layout.describe(average),
                        per_file_csv=tmp_path / "files.csv")
    lines = (tmp_path / "run.csv").read_text().splitlines()
    assert lines[0] == "frequency_hz,run_mean,run_std,run_sem" and len(lines) == 1 + N_BINS + 2
    table = np.loadtxt(tmp_path / "run.csv", delimiter=",", skiprows=1)
    np.testing.assert_array_equal(table[:, 1], average.mean)  # 17 digits: exact
    got = load_run(tmp_path / "run.csv", per_file_csv=tmp_path / "files.csv")
    assert got.metadata == written and written["n_files"] == 6
    np.testing.assert_array_equal(got.run_sem, average.sem)
    np.testing.assert_array_equal(got.file_index, indices)
    np.testing.assert_array_equal(got.file_std[2], file_spectrum(indices[2])[1])
    files = np.loadtxt(tmp_path / "files.csv", delimiter=",", skiprows=1)
    assert files.shape == (6 * N_BINS, 4)
    np.testing.assert_array_equal(files[N_BINS:2 * N_BINS, 1], average.frequency_hz)
    alone = load_run(tmp_path / "run.csv")
    assert alone.file_index is None and alone.run == "r7"


def test_a_csv_without_per_file_csv_reads_no_page(tmp_path):
    average, indices = fake_run(3)

    def pages():
        raise AssertionError("no page is needed for the run average")
        yield

    write_run(tmp_path / "run.csv", average, pages(), layout.describe(average))
    assert load_run(tmp_path / "run.csv").metadata["n_files"] == 0


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".csv"])
def test_an_existing_output_is_refused_without_force(tmp_path, suffix):
    average, indices = fake_run(3)
    out = tmp_path / f"run{suffix}"
    out.write_text("precious")
    with pytest.raises(ValueError, match="exists: give --force"):  # quax export exits 2 (a usage error)
        write_run(out, average, fake_pages(indices), layout.describe(average))
    assert out.read_text() == "precious"
    write_run(out, average, fake_pages(indices), layout.describe(average), force=True)
    np.testing.assert_array_equal(load_run(out).run_mean, average.mean)


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".csv"])
def test_an_interrupted_export_leaves_no_file(tmp_path, suffix):
    average, indices = fake_run(40)
    extra = {"per_file_csv": tmp_path / "files.csv"} if suffix == ".csv" else {}
    with pytest.raises(ConnectionError):
        write_run(tmp_path / f"run{suffix}", average, fake_pages(indices, fail_after=3), layout.describe(average),
                  **extra)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary file
    (tmp_path / f"run{suffix}").write_text("the previous export")
    with pytest.raises(ConnectionError):  # with --force, the old file stays until the new one is whole
        write_run(tmp_path / f"run{suffix}", average, fake_pages(indices, fail_after=3), layout.describe(average),
                  force=True, **extra)
    assert [p.name for p in tmp_path.iterdir()] == [f"run{suffix}"]
    assert (tmp_path / f"run{suffix}").read_text() == "the previous export"


def test_write_export_of_arrays_in_memory(tmp_path):
    """The arrays of client.fetch_run, written as any format (quax analyse's tests use it)."""
    average, indices = fake_run(5)
    pages = list(fake_pages(indices))
    data = {"frequency_hz": average.frequency_hz, "run_mean": average.mean, "run_std": average.std,
            "run_sem": average.sem, "n_slices_total": np.int64(500), "file_index": np.array(indices),
            "file_mean": np.concatenate([p.mean for p in pages]), "file_std": np.concatenate([p.std for p in pages]),
            "file_n_slices": np.concatenate([p.columns["n_slices"] for p in pages]),
            "file_latency_s": np.full(5, 0.5), "run": np.array("r7")}
    for suffix in (".h5", ".npz"):
        got = load_run(write_export(data, tmp_path / f"r{suffix}")).as_dict()
        for key, value in data.items():
            np.testing.assert_array_equal(got[key], value, err_msg=key)
        assert got["file_completed_at_s"].shape == (5,)
    assert load_run(tmp_path / "r.h5").metadata["sample_rate_hz"] == pytest.approx(RATE_HZ)


def test_the_json_answer_of_an_older_worker_decodes_to_the_same_page():
    mean, std = file_spectrum(3)
    doc = {"run": "r7", "n_files": 1, "files": [{"run": "r7", "file_index": 3, "n_slices": 100, "latency_s": 0.5,
                                                 "acquired_at_s": None, "mean": list(mean), "std": list(std)}]}
    page = decode_files_page(json.dumps(doc).encode())
    np.testing.assert_array_equal(page.mean, [mean])
    assert page.columns["n_slices"].dtype == np.int64 and np.isnan(page.columns["acquired_at_s"][0])


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_export_memory_does_not_grow_with_the_number_of_files(tmp_path, suffix):
    """Peak Python/numpy memory while exporting N files of 3072 bins, pages of 64: the same for
    N = 128 and N = 1024 (8x the data, 48 MiB of spectra), within one page's worth."""
    n_bins, page_size = 3072, 64
    page_bytes = page_size * n_bins * 8 * 2
    peaks = {}
    for n_files in (128, 1024):
        average, indices = fake_run(n_files, n_bins)
        tracemalloc.start()
        write_run(tmp_path / f"run{n_files}{suffix}", average, fake_pages(indices, page_size, n_bins),
                  layout.describe(average))
        peaks[n_files] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    print(f"{suffix}: peak traced memory {peaks[128] / 2**20:.1f} MiB for 128 files, "
          f"{peaks[1024] / 2**20:.1f} MiB for 1024 files (one page: {page_bytes / 2**20:.1f} MiB)")
    assert peaks[1024] < peaks[128] + page_bytes / 2
    assert peaks[1024] < 4 * page_bytes
    if suffix == ".npz":
        with zipfile.ZipFile(tmp_path / "run1024.npz") as archive:
            assert archive.getinfo("file_mean.npy").file_size == 1024 * n_bins * 8 + 128


def test_the_binary_files_page_holds_what_the_json_page_holds():
    """stream/web.py's format=npz page, decoded by the client: the numbers of views.file_document."""
    from quax_faust.core.wire import FileSpectrum
    from quax_faust.stream import views
    from quax_faust.stream.web import files_page_npz

    specs = []
    for i in (3, 4, 9):
        mean, std = file_spectrum(i)
        specs.append(FileSpectrum(run="r7", file_index=i, n_slices=2730, tail_samples=2048, sample_rate_hz=RATE_HZ,
                                  first_produced_at_s=1.7e9 + i, last_produced_at_s=1.7e9 + i + 4.2,
                                  completed_at_s=1.7e9 + i + 4.7, mean=mean, std=std))
    page = decode_files_page(files_page_npz(specs))
    np.testing.assert_array_equal(page.file_index, [3, 4, 9])
    for row, spec in enumerate(specs):
        doc = views.file_document(spec)
        np.testing.assert_array_equal(page.mean[row], doc["mean"])
        np.testing.assert_array_equal(page.std[row], doc["std"])
        np.testing.assert_equal({name: values[row] for name, values in page.columns.items()},  # NaN for null
                                {k: np.nan if v is None else v for k, v in doc.items()
                                 if k not in ("run", "file_index", "mean", "std")})
    assert set(FILE_COLUMNS) <= set(page.columns)
    assert len(decode_files_page(files_page_npz([]))) == 0


def test_the_dashboard_reads_a_binary_page_as_the_json_documents():
    from dashboard.feed import file_documents, spectrum_arrays

    _, indices = fake_run(3)
    pages = list(fake_pages(indices))
    pages[0].columns["acquired_at_s"] = np.array([np.nan, 1.7e9, np.nan])
    docs = file_documents("r7", pages[0])
    assert [d["file_index"] for d in docs] == [0, 1, 2] and docs[1]["n_slices"] == 101
    assert docs[0]["acquired_at_s"] is None and docs[1]["acquired_at_s"] == 1.7e9  # null, as in JSON
    mean, std = spectrum_arrays(docs[2])
    np.testing.assert_array_equal(mean, file_spectrum(2)[0])


def test_a_page_of_files_is_cut_from_the_intervals():
    from quax_faust.core.index_set import IndexSet
    from quax_faust.stream.web import _page_of

    files = IndexSet()
    for i in [*range(0, 5), *range(7, 9), *range(20, 30), 40]:
        files.add(i)
    for start in range(0, 45, 3):
        for limit in (1, 4, 7, 100):
            assert _page_of(files.bounds(), start, limit) == [i for i in files if i >= start][:limit], (start, limit)
