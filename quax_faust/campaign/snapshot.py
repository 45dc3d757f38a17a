"""The live campaign's state on disk: a restart resumes from it instead of the topics' beginning.

One file, ``<var_dir>/campaign/state-<app_id>.bin``: a magic line, the length of a JSON header,
the header (next offsets, metadata, counts, each run's blob length), then each run's accumulator
(core.accumulators.RunAccumulator.to_bytes: mean and M2 as float64, exact). Written to a
temporary file, flushed to disk and renamed, so a crash leaves the previous snapshot whole. About
50 kB per run of 3072 bins: 5 MB for a 100-run campaign.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections import Counter
from pathlib import Path

from quax_faust.campaign.state import CampaignState, Goal
from quax_faust.core.accumulators import RunAccumulator
from quax_faust.core.errors import QuaxError
from quax_faust.search.run_excess import CampaignConfig

MAGIC = b"quax-campaign-state/1\n"
log = logging.getLogger("quax.campaign")
_LENGTH = struct.Struct("<Q")


class SnapshotError(RuntimeError):
    """A snapshot that cannot be read: named, with what to do."""


def snapshot_path(var_dir: Path, app_id: str) -> Path:
    return Path(var_dir) / "campaign" / f"state-{app_id}.bin"


def save(state: CampaignState, path: Path) -> int:
    """Write the state atomically; returns the bytes written."""
    blobs = [(run, acc.to_bytes()) for run, acc in sorted(state.runs.items())]
    header = json.dumps({
        "runs_pattern": state.runs_pattern, "other_runs": sorted(state.other_runs),
        "next_offsets": state.next_offsets, "metadata": state.metadata,
        "rejected": [[role, reason, n] for (role, reason), n in sorted(state.rejected.items())],
        "files_folded": state.files_folded, "duplicate_files": state.duplicate_files,
        "runs": [[run, len(blob)] for run, blob in blobs]}, allow_nan=False).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(MAGIC + _LENGTH.pack(len(header)) + header)
        for _, blob in blobs:
            out.write(blob)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return path.stat().st_size


def load(path: Path, config: CampaignConfig, goal: Goal, runs_pattern: str = "") -> CampaignState | None:
    """The state saved at ``path``, every run marked changed; None if there is no snapshot, or
    if it was saved for other runs (another ``runs_pattern``: the campaign is rebuilt from the
    topics). SnapshotError naming the file if it is not one (delete it to rebuild)."""
    path = Path(path)
    if not path.is_file():
        return None
    data = path.read_bytes()
    try:
        if not data.startswith(MAGIC):
            raise ValueError("it does not start with " + repr(MAGIC))
        start = len(MAGIC) + _LENGTH.size
        (n,) = _LENGTH.unpack_from(data, len(MAGIC))
        header = json.loads(data[start:start + n])
        if header.get("runs_pattern", "") != runs_pattern:
            log.warning("live campaign: %s was saved for the runs %r, not %r: rebuilding the campaign from "
                        "the topics' beginning", path, header.get("runs_pattern", ""), runs_pattern)
            return None
        position, runs = start + n, {}
        for run, length in header["runs"]:
            blob = data[position:position + length]
            if len(blob) != length:
                raise ValueError(f"run {run}: {len(blob)} of {length} bytes")
            runs[run] = RunAccumulator.from_bytes(blob)
            position += length
        return CampaignState(config=config, goal=goal, runs_pattern=runs_pattern, runs=runs,
                             metadata=header["metadata"], other_runs=set(header.get("other_runs", [])),
                             next_offsets={k: int(v) for k, v in header["next_offsets"].items()},
                             rejected=Counter({(role, reason): n for role, reason, n in header["rejected"]}),
                             files_folded=int(header["files_folded"]),
                             duplicate_files=int(header["duplicate_files"]))
    except (ValueError, KeyError, TypeError, struct.error, QuaxError) as exc:
        raise SnapshotError(f"{path}: not a readable live-campaign snapshot ({exc}); delete it to rebuild "
                            "the campaign from the topics' beginning") from None
