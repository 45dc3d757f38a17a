"""A campaign file (``quax campaign --out``): the campaign analysis of many runs, as tables of columns.

Each table is a set of equally long columns (one value per row), each with its unit:

    grand/           one row per RF grid bin: frequency_hz, g2, sigma, significance, ...
    candidates/      the rescan list, strongest first
    candidate_runs/  the runs covering each candidate (column candidate: its row in candidates/)
    exclusion/       the limit on |g_agg| per grid bin beside KSVZ and DFSZ, GeV**-1
    runs_used/       the runs in the grand spectrum, with their metadata
    runs_left_out/   the runs kept out, with the reason

What the tables are is search/campaign_result.py's (``tables``); here is only how they are
stored. HDF5 (.h5): a group per table, a dataset per column with a "unit" attribute, the file's
metadata as JSON in the attribute "metadata_json". NumPy (.npz): an entry "table/column" per
column, and "metadata" (JSON, the units under "units"). Strings are UTF-8 (h5py string datasets;
numpy unicode arrays in .npz, read without pickle). Written to a temporary file, renamed at the end.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from quax_faust.exports.atomic import atomic_output, refuse_existing
from quax_faust.exports.layout import software
from quax_faust.search.campaign_result import Campaign, band, best_limit

FORMAT = "quax-campaign/1"
FORMATS = (".h5", ".npz")

Tables = Mapping[str, Mapping[str, tuple[np.ndarray, str]]]
"""table name -> column name -> (values (n_rows,), unit)."""


@dataclass(frozen=True)
class CampaignFile:
    """A campaign file read back: tables[table][column] (n_rows,) arrays (strings as str arrays),
    units[table][column], and the metadata (format, config, threshold, inputs, ...)."""

    tables: dict[str, dict[str, np.ndarray]]
    units: dict[str, dict[str, str]]
    metadata: dict[str, Any]


def check_output(path: Path, *, force: bool = False) -> None:
    """ValueError for a suffix that is not .h5/.npz or an existing file without ``force``."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise ValueError(f"{path}: a campaign file is {' or '.join(FORMATS)}, not {path.suffix or 'without a suffix'}")
    try:
        refuse_existing(path, force)
    except FileExistsError as exc:
        raise ValueError(str(exc)) from None


def write_campaign(path: Path, tables: Tables, metadata: Mapping[str, Any], *, force: bool = False) -> Path:
    """Write the tables and metadata (JSON-serialisable) to ``path`` (.h5 or .npz), atomically."""
    path = Path(path)
    check_output(path, force=force)
    for table, columns in tables.items():
        lengths = {name: np.shape(values)[0] for name, (values, _) in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"table {table}: columns of different lengths {lengths}")
    units = {table: {name: unit for name, (_, unit) in columns.items()} for table, columns in tables.items()}
    document = {"format": FORMAT, **metadata, "units": units}
    with atomic_output(path, force=force) as temporary:
        if path.suffix == ".h5":
            _write_h5(temporary, tables, document)
        else:
            _write_npz(temporary, tables, document)
    return path


def _write_h5(path: Path, tables: Tables, document: dict[str, Any]) -> None:
    with h5py.File(path, "w") as f:
        for table, columns in tables.items():
            group = f.create_group(table)
            for name, (values, unit) in columns.items():
                values = np.asarray(values)
                if values.dtype.kind == "U":
                    dataset = group.create_dataset(name, data=values.astype(object), dtype=h5py.string_dtype())
                else:
                    dataset = group.create_dataset(name, data=values)
                dataset.attrs["unit"] = unit
        f.attrs["format"] = FORMAT
        f.attrs["metadata_json"] = json.dumps(document)


def _write_npz(path: Path, tables: Tables, document: dict[str, Any]) -> None:
    arrays = {f"{table}/{name}": np.asarray(values) for table, columns in tables.items()
              for name, (values, _) in columns.items()}
    with open(path, "wb") as out:
        np.savez(out, metadata=np.array(json.dumps(document)), **arrays)


def read_campaign(path: Path) -> CampaignFile:
    """A campaign file written by write_campaign (.h5 or .npz)."""
    path = Path(path)
    tables: dict[str, dict[str, np.ndarray]] = {}
    if path.suffix == ".h5":
        with h5py.File(path, "r") as f:
            document = json.loads(f.attrs["metadata_json"])
            for table, group in f.items():
                tables[table] = {name: (np.array(d.asstr()[()], dtype=str) if h5py.check_string_dtype(d.dtype)
                                        else d[()]) for name, d in group.items()}
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            document = json.loads(str(npz["metadata"]))
            for key in npz.files:
                if "/" in key:
                    table, name = key.split("/", 1)
                    tables.setdefault(table, {})[name] = npz[key]
    else:
        raise ValueError(f"{path}: a campaign file is {' or '.join(FORMATS)}")
    if document.get("format") != FORMAT:
        raise ValueError(f"{path}: not a campaign file ({FORMAT}), format {document.get('format')!r}")
    units = document.pop("units", {})
    return CampaignFile(tables, units, document)


def campaign_metadata(c: Campaign, inputs: dict[str, Any], goal: dict[str, float]) -> dict[str, Any]:
    """The campaign file's metadata: when, by which code, from what, with which knobs and goal."""
    return {"created_at_s": time.time(), **software(), "inputs": inputs,
            "config": dataclasses.asdict(c.grand.config), "threshold_sigma": c.threshold_sigma, **goal,
            "expected_false_candidates": c.expected_false_candidates, "bin_width_hz": c.grand.bin_width_hz,
            "band": band(c.grand), "best_limit": best_limit(c),
            "n_runs_used": len(c.grand.runs), "n_runs_left_out": len(c.grand.left_out)}
