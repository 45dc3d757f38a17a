"""Run exports: a run's average and every file's spectrum written to a file, and read back.

    layout.py   what an export holds: dataset names, units, per-file columns, the metadata
    atomic.py   an output appears whole or not at all (a temporary file renamed at the end)
    h5.py       HDF5: chunked, compressed datasets written page by page
    npz.py      NumPy .npz, written page by page (members spooled to disk, not memory)
    csv.py      the run average as CSV, and the long per-file CSV
    write.py    write_run (the format by the file's suffix), write_export (arrays in memory)
    load.py     load_run: any export back into arrays and metadata

No Kafka and no HTTP here: the pages come from quax_faust.client (or anything that yields them).
"""

from quax_faust.exports.load import RunExport, load_run
from quax_faust.exports.write import write_export, write_run

__all__ = ["RunExport", "load_run", "write_export", "write_run"]
