"""Spark batch reprocessing of the archived topics: an independent audit of the live tables.

    topic slices  --(Kafka source, bounded offsets)--> fold.fold_slices  (decode, FFT, per-file sums,
                                                                          in each task: bitmaps)
    topic spectra --(Kafka source, bounded offsets)--> fold.fold_spectra (decode, first copy wins)
        --> fold.merge_file_parts (per file)  --> fold.run_moments (per run)  --> Parquet + .npz
    verify.compare(live tables, batch result) --> verdict

``job.reprocess`` runs it; ``quax reprocess`` and ``quax verify`` (spark_batch/cli.py) are the
commands. Nothing here imports pyspark at module import time except ``session`` and ``job``.
"""
