"""A run's metadata (quax_faust/core/run_meta.py): typed fields with units, free text, conflicts
refused with the recorded value shown, the record's round trip, and SigMF sidecars."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from quax_faust.core import run_meta
from quax_faust.core.run_meta import MetadataError


@pytest.mark.parametrize("key, value, expected", [
    ("lo_frequency_hz", "9.2e9", 9.2e9), ("lo_frequency_hz", "9.2 GHz", 9.2e9), ("lo_frequency_hz", "9200MHz", 9.2e9),
    ("cavity_frequency_hz", 10.35e9, 10.35e9), ("b_field_t", "8 T", 8.0), ("b_field_t", "500 mT", 0.5),
    ("t_sys_k", "4.5 K", 4.5), ("t_sys_k", "4.5", 4.5), ("volume_m3", "1.2e-4 m^3", 1.2e-4),
    ("loaded_q", "1e5", 1e5), ("form_factor", "0.6", 0.6), ("coupling_beta", 2, 2.0),
    ("operator", "A. Rettaroli", "A. Rettaroli"), ("notes", "after the helium refill", "after the helium refill"),
])
def test_values_are_read_in_the_field_unit(key, value, expected):
    assert run_meta.parse_value(key, value) == pytest.approx(expected, rel=1e-15) if isinstance(expected, float) \
        else run_meta.parse_value(key, value) == expected


@pytest.mark.parametrize("key, value, words", [
    ("lo_frequency_hz", "9.2 GT", "unit 'GT', expected Hz"), ("b_field_t", "8 K", "unit 'K', expected T"),
    ("t_sys_k", "120 mK", "unit 'mK', expected K"), ("lo_frequency_hz", "nine", "a number in Hz"),
    ("loaded_q", "0", "must be a finite number > 0"), ("form_factor", "1.5", "<= 1"),
    ("lo_frequency_hz", float("inf"), "finite"), ("b_field_t", True, "a number in T"),
    ("Bad-Key", "1", "metadata key 'Bad-Key'"), ("notes", ["a"], "free-text fields take a string"),
])
def test_a_wrong_type_or_unit_is_a_clear_error(key, value, words):
    with pytest.raises(MetadataError) as error:
        run_meta.parse_value(key, value)
    assert error.value.reason == "bad_metadata" and words in str(error.value) and key in str(error.value)


def test_metadata_may_grow_but_never_change():
    recorded = run_meta.parse_pairs(["lo_frequency_hz=9.2 GHz", "operator=AR"])
    grown = run_meta.merge(recorded, {"b_field_t": "8 T", "lo_frequency_hz": "9200 MHz"})
    assert grown == {"lo_frequency_hz": 9.2e9, "operator": "AR", "b_field_t": 8.0}
    with pytest.raises(MetadataError) as error:
        run_meta.merge(grown, {"lo_frequency_hz": "9.3 GHz"})
    assert error.value.reason == "metadata_conflict"
    assert "recorded lo_frequency_hz = 9200000000.0" in str(error.value)
    with pytest.raises(MetadataError, match="KEY=VALUE"):
        run_meta.parse_pairs(["lo_frequency_hz"])
    with pytest.raises(MetadataError, match="contradicts the command line"):
        run_meta.parse_pairs(["t_sys_k=4", "t_sys_k=5"])


def test_the_metadata_record_round_trips_and_refuses_garbage():
    fields = {"lo_frequency_hz": 9.2e9, "operator": "AR", "loaded_q": 1e5}
    assert run_meta.decode(run_meta.encode("run42", fields)) == ("run42", fields)
    for bad in (b"", b"{}", b"[1]", b'{"version": 2, "run": "r", "fields": {}}',
                b'{"version": 1, "run": "r", "fields": {"loaded_q": -1}}', b"\xff"):
        with pytest.raises(MetadataError) as error:
            run_meta.decode(bad)
        assert error.value.reason == "bad_metadata"


def test_a_toml_file_gives_the_same_fields(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('lo_frequency_hz = "9.2 GHz"\nloaded_q = 1e5\noperator = "AR"\n')
    assert run_meta.read_file(path) == {"lo_frequency_hz": 9.2e9, "loaded_q": 1e5, "operator": "AR"}
    path.write_text("[detector]\nloaded_q = 1\n")
    with pytest.raises(MetadataError, match="tables and arrays"):
        run_meta.read_file(path)
    path.write_text("loaded_q = \n")
    with pytest.raises(MetadataError, match="run.toml"):
        run_meta.read_file(path)


def sigmf_doc(**capture):
    return {"global": {"core:datatype": "cf32_le", "core:sample_rate": 2e6, "core:version": "1.0.0"},
            "captures": [{"core:sample_start": 0, **capture}], "annotations": []}


def test_a_sigmf_sidecar_gives_rate_centre_frequency_and_time(tmp_path):
    i_path = tmp_path / "duck_i_00012.dat"
    assert run_meta.sidecar_path(i_path) is None
    side = tmp_path / "duck_00012.sigmf-meta"
    side.write_text(json.dumps(sigmf_doc(**{"core:frequency": 9.2e9, "core:datetime": "2026-11-30T01:02:03.5Z"})))
    assert run_meta.sidecar_path(i_path) == side
    info = run_meta.read_sigmf(side)
    when = datetime(2026, 11, 30, 1, 2, 3, 500000, tzinfo=timezone.utc).timestamp()
    assert info == run_meta.Sidecar(2e6, 9.2e9, when)
    assert info.run_fields() == {"sample_rate_hz": 2e6, "lo_frequency_hz": 9.2e9}
    side.write_text(json.dumps(sigmf_doc()))
    assert run_meta.read_sigmf(side) == run_meta.Sidecar(2e6, None, None)
    side.write_text('{"global": {}}')
    with pytest.raises(MetadataError, match="duck_00012.sigmf-meta"):
        run_meta.read_sigmf(side)
