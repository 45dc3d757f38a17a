"""Spark batch reprocessing of the archived topics: an independent audit of the live tables.

    topic slices  --(Kafka source, bounded offsets)--> fold.fold_slices  (decode, FFT, per-file sums,
                                                                          in each task: slice masks)
    topic spectra --(Kafka source, bounded offsets)--> fold.fold_spectra (decode, first copy wins)
        --> fold.merge_file_parts (per file)  --> fold.run_sums (per run)  --> Parquet + .npz
    verify.compare(live tables, batch result) --> verdict

The numerics are ``recompute`` (scipy.fft, float64 sums, de-duplication by slice index): written
apart from the live workers' dsp and accumulators, which nothing here imports, so the audit can
catch a bug in them (docs/spark.md). ``job.reprocess`` runs it; ``quax reprocess`` and
``quax verify`` (spark_batch/cli.py) are the commands. ``quax reprocess-campaign`` (campaign.py,
campaign_fold.py) folds many runs in one pass the same way, then runs the campaign analysis
(quax_faust.search, on the driver only) on the recomputed averages (docs/spark.md, "Campaigns"). Nothing here imports pyspark at module
import time except ``session``, ``job`` and ``archive``.
"""
