"""A run's own metadata: the detector parameters it was taken with, recorded once per run.

Known fields are typed and carry a unit; a value may be given in that unit or with an SI prefix of
it ("9.2 GHz", "8 T", "120 mK" for t_sys_k is refused: kelvin only, no prefix); any other key is
free text (operator, notes, ...). A run's metadata may grow (a field added later), never change: a
value that differs from the recorded one is refused with the recorded value shown.

Where the DAQ writes a SigMF sidecar (``duck_NNNNN.sigmf-meta`` or ``duck_i_NNNNN.sigmf-meta``), its
sample rate, centre frequency (the LO) and capture time are read from it (``read_sigmf``).
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping

from quax_faust.core.errors import QuaxError

VERSION = 1


@dataclass(frozen=True)
class Field:
    """A known metadata field: its unit (SI, '' for a pure number) and the values it accepts."""

    unit: str
    meaning: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  # True: the value must be > low


KNOWN: dict[str, Field] = {
    "lo_frequency_hz": Field("Hz", "local-oscillator frequency added to the baseband axis", 0.0),
    "cavity_frequency_hz": Field("Hz", "cavity resonance frequency", 0.0, low_open=True),
    "loaded_q": Field("", "loaded quality factor of the cavity", 0.0, low_open=True),
    "coupling_beta": Field("", "antenna coupling coefficient beta", 0.0),
    "b_field_t": Field("T", "magnetic field", 0.0),
    "volume_m3": Field("m^3", "cavity volume", 0.0, low_open=True),
    "form_factor": Field("", "mode form factor C", 0.0, 1.0, low_open=True),
    "t_sys_k": Field("K", "system noise temperature", 0.0, low_open=True),
    "sample_rate_hz": Field("Hz", "ADC sample rate of each channel", 0.0, low_open=True),
    "start_time_s": Field("s", "acquisition start, Unix seconds (UTC)", 0.0),
}
"""Known fields; every other key is free text (operator, notes, ...)."""

PREFIXES = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
KEY_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
_NUMBER_UNIT = re.compile(r"\s*([-+0-9.eE]+(?:[eE][-+]?\d+)?)\s*([A-Za-z^0-9]*)\s*")


class MetadataError(QuaxError):
    """Bad metadata (reason ``bad_metadata``) or a value that contradicts the recorded one
    (reason ``metadata_conflict``)."""


def parse_value(key: str, value: Any) -> Any:
    """A field's value in its unit: a number, or a string "<number> [prefix][unit]" for known
    fields; free-text fields keep strings. MetadataError naming the field otherwise."""
    if not KEY_PATTERN.fullmatch(key):
        raise MetadataError("bad_metadata", f"metadata key {key!r}: use 1-64 of a-z 0-9 _, starting with a letter")
    field = KNOWN.get(key)
    if field is None:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise MetadataError("bad_metadata", f"{key}: free-text fields take a string or a number, got {value!r}")
        return value if not isinstance(value, float) or math.isfinite(value) else str(value)
    number = _number_in_unit(key, field, value)
    low_ok = number > field.low if field.low_open else number >= field.low
    if not (math.isfinite(number) and low_ok and number <= field.high):
        bound = f"{'>' if field.low_open else '>='} {field.low:g}" + (f" and <= {field.high:g}" if field.high < math.inf else "")
        raise MetadataError("bad_metadata", f"{key} = {value!r}: must be a finite number {bound} ({field.unit or 'no unit'})")
    return number


def _number_in_unit(key: str, field: Field, value: Any) -> float:
    if isinstance(value, bool):
        raise MetadataError("bad_metadata", f"{key} = {value!r}: a number in {field.unit or 'no unit'} expected")
    if isinstance(value, (int, float)):
        return float(value)
    match = _NUMBER_UNIT.fullmatch(str(value))
    if not match:
        raise MetadataError("bad_metadata", f"{key} = {value!r}: a number in {field.unit or 'no unit'} expected")
    try:
        number = float(match.group(1))
    except ValueError:
        raise MetadataError("bad_metadata", f"{key} = {value!r}: {match.group(1)!r} is not a number") from None
    unit = match.group(2)
    if not unit:
        return number
    for prefix, scale in PREFIXES.items():
        if field.unit and field.unit not in ("K", "s", "m^3") and unit == prefix + field.unit:
            return number * scale
    if unit == field.unit:
        return number
    raise MetadataError("bad_metadata", f"{key} = {value!r}: unit {unit!r}, expected {field.unit or 'no unit'}"
                        + (" (or a prefix of it: m, k, M, G)" if field.unit in ("Hz", "T") else ""))


def lo_frequency_hz(fields: Mapping[str, Any], fallback_hz: float) -> float:
    """A run's LO (Hz): its recorded ``lo_frequency_hz``; ``fallback_hz`` (the setting) only for a
    run recorded before metadata existed. The one rule of the workers' views and the dashboard."""
    lo = fields.get("lo_frequency_hz")
    return float(fallback_hz if lo is None else lo)


def parse_pairs(pairs: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (``--meta``) into parsed fields; a key given twice must agree."""
    fields: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise MetadataError("bad_metadata", f"--meta {pair!r}: expected KEY=VALUE")
        fields = merge(fields, {key.strip(): value.strip()}, what="the command line")
    return fields


def read_file(path: Path) -> dict[str, Any]:
    """A TOML file of ``key = value`` lines (``--meta-file run.toml``), parsed field by field."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MetadataError("bad_metadata", f"{path}: {exc}") from None
    nested = [k for k, v in raw.items() if isinstance(v, (dict, list))]
    if nested:
        raise MetadataError("bad_metadata", f"{path}: tables and arrays are not metadata fields: {nested}")
    return {key: parse_value(key, value) for key, value in raw.items()}


def merge(recorded: Mapping[str, Any], new: Mapping[str, Any], *, what: str = "the run") -> dict[str, Any]:
    """Recorded fields plus the new ones; MetadataError ``metadata_conflict`` if a new value
    differs from the recorded one (numbers equal within 1e-12 relative)."""
    merged = dict(recorded)
    for key, value in new.items():
        value = parse_value(key, value)
        if key in merged and not _same(merged[key], value):
            raise MetadataError("metadata_conflict", f"{key} = {value!r} contradicts {what}'s recorded "
                                f"{key} = {merged[key]!r}; a run's metadata cannot change (use another run id)")
        merged[key] = value
    return merged


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or abs(a - b) <= 1e-12 * max(abs(a), abs(b))
    return a == b


def encode(run: str, fields: Mapping[str, Any]) -> bytes:
    """The run's metadata record (JSON, UTF-8): key = run id on the metadata topic and table."""
    return json.dumps({"version": VERSION, "run": run, "fields": dict(sorted(fields.items()))},
                      allow_nan=False).encode()


def decode(data: bytes) -> tuple[str, dict[str, Any]]:
    """(run, fields) of a metadata record; MetadataError ``bad_metadata`` if it is not one."""
    try:
        doc = json.loads(data)
        if doc.get("version") != VERSION or not isinstance(doc.get("fields"), dict):
            raise ValueError(f"not a version-{VERSION} run metadata record")
        return str(doc["run"]), {key: parse_value(key, value) for key, value in doc["fields"].items()}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise MetadataError("bad_metadata", f"run metadata record: {exc}") from None


@dataclass(frozen=True)
class Sidecar:
    """What a SigMF sidecar says about a file: sample rate (Hz), centre frequency (Hz, None if not
    given) and capture time (Unix seconds, None if not given)."""

    sample_rate_hz: float
    centre_frequency_hz: float | None
    capture_time_s: float | None

    def run_fields(self) -> dict[str, float]:
        """The run-level fields this sidecar sets."""
        fields = {"sample_rate_hz": self.sample_rate_hz}
        if self.centre_frequency_hz is not None:
            fields["lo_frequency_hz"] = self.centre_frequency_hz
        return fields


def sidecar_path(i_path: Path) -> Path | None:
    """The SigMF sidecar of a pair (``duck_NNNNN.sigmf-meta`` or ``duck_i_NNNNN.sigmf-meta``), or None."""
    i_path = Path(i_path)
    candidates = [i_path.with_suffix(".sigmf-meta"),
                  i_path.with_name(i_path.name.replace("duck_i_", "duck_", 1)).with_suffix(".sigmf-meta")]
    return next((p for p in candidates if p.is_file()), None)


def read_sigmf(path: Path) -> Sidecar:
    """Read a SigMF metadata file (validated by the sigmf package): core:sample_rate, the first
    capture's core:frequency and core:datetime. MetadataError naming the file otherwise."""
    from jsonschema.exceptions import ValidationError
    from sigmf import SigMFFile
    from sigmf.error import SigMFError

    try:
        meta = SigMFFile(metadata=json.loads(Path(path).read_text()))
        meta.validate()
        rate = meta.get_global_field("core:sample_rate")
        capture = (meta.get_captures() or [{}])[0]
    except (OSError, ValueError, SigMFError, ValidationError) as exc:
        raise MetadataError("bad_metadata", f"{path}: not a valid SigMF metadata file: {exc}") from None
    if rate is None:
        raise MetadataError("bad_metadata", f"{path}: no core:sample_rate")
    when = capture.get("core:datetime")
    try:
        time_s = datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp() if when else None
    except ValueError:
        raise MetadataError("bad_metadata", f"{path}: core:datetime {when!r} is not ISO 8601") from None
    frequency = capture.get("core:frequency")
    return Sidecar(parse_value("sample_rate_hz", rate),
                   None if frequency is None else parse_value("lo_frequency_hz", frequency), time_s)
