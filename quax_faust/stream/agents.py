"""What the agents do with one event: fold a slice batch into its file, a finished file into its
run (and search the run's new average), or put a bad message on the dead-letter topic.

Any QuaxError (a message that cannot be decoded, one that does not fit its file or run, a stored
table value that cannot be read) becomes a dead-letter record with its reason; the agent goes on.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import replace

from quax_faust.core import run_meta, wire
from quax_faust.core.accumulators import COMPLETE, FileAccumulator, RunAccumulator
from quax_faust.core.errors import QuaxError
from quax_faust.search import candidates, detector_figures, spectrum_search
from quax_faust.stream import faust_fixes, metrics
from quax_faust.stream.chain import Chain

log = logging.getLogger(__name__)


async def on_slice_batch(chain: Chain, event) -> None:
    """Decode a slice batch, FFT its new slices into its file; publish the file when complete."""
    if faust_fixes.redelivered(event.message):
        return
    try:
        batch = wire.decode_slice_batch(event.value)
        key = wire.file_key(batch.run, batch.file_index)
        if event.key != key:
            raise wire.WireError("key_mismatch", f"key {event.key!r} but the message is {key!r}")
        await fold_slice_batch(chain, key, batch, event.message.tp)
    except QuaxError as exc:
        await reject(chain, event, chain.settings.slices_topic, exc)
    done(chain, event)


async def fold_slice_batch(chain: Chain, key: bytes, batch: wire.SliceBatch, tp=None) -> None:
    started = time.perf_counter()
    stored = chain.files.get(key)
    acc = FileAccumulator.from_bytes(stored) if stored else FileAccumulator.for_batch(batch)
    table_seconds = time.perf_counter() - started
    assignment = chain.app.consumer.assignment
    metrics.MESSAGES.inc()
    if acc.status == COMPLETE:
        metrics.DUPLICATE_SLICES.inc(batch.slice_count)
        chain.files[key] = stored  # re-assert, so the changelog holds what RocksDB holds
        metrics.files_in_progress.note(key, tp, True, assignment)
        return
    folded = acc.fold(batch, block_rows=chain.settings.fft_block_rows, threads=chain.settings.fft_threads)
    if folded.n_new_slices:
        metrics.FFT_SECONDS.observe(folded.fft_seconds)
        metrics.SLICES.inc(folded.n_new_slices)
        metrics.SAMPLE_BYTES.inc(folded.sample_bytes)
        metrics.DATA_SECONDS.inc(folded.data_seconds)
    metrics.DUPLICATE_SLICES.inc(folded.n_duplicate_slices)
    if acc.is_complete:
        spectrum = acc.spectrum(completed_at_s=time.time())
        # Wait for the broker's ack before forgetting the sums: a crash in between re-sends it, and
        # fold_spectra ignores the repeat.
        await (await chain.spectra_topic.send(key=batch.run.encode(),
                                              value=wire.encode_file_spectrum(spectrum)))
        acc.mark_complete()
        metrics.FILES_COMPLETED.inc()
        metrics.TAIL_SAMPLES.inc(acc.tail_samples)
        metrics.DATA_SECONDS.inc(acc.tail_samples / acc.sample_rate_hz)
    put_started = time.perf_counter()
    chain.files[key] = acc.to_bytes()
    metrics.TABLE_SECONDS.observe(table_seconds + time.perf_counter() - put_started)
    metrics.files_in_progress.note(key, tp, acc.is_complete, assignment)


async def on_file_spectrum(chain: Chain, event) -> None:
    """Fold a finished file into its run's average, once; keep the file's spectrum."""
    if faust_fixes.redelivered(event.message):
        return
    try:
        spectrum = wire.decode_file_spectrum(event.value)
        run_key = spectrum.run.encode()
        file_key = wire.file_key(spectrum.run, spectrum.file_index)
        stored = chain.runs.get(run_key)
        acc = RunAccumulator.from_bytes(stored) if stored else RunAccumulator.for_spectrum(spectrum)
        if acc.fold(spectrum):
            chain.file_spectra[file_key] = event.value  # first: a crash before the next line re-folds
            chain.runs[run_key] = acc.to_bytes()
            now = time.time()
            metrics.FILES_FOLDED.inc()
            metrics.FILE_LATENCY.observe(now - spectrum.last_produced_at_s)
            metrics.LAST_FILE_COMPLETED.set(now)
            searched = await search_candidates(chain, acc)
            export_detector_figures(chain, acc, spectrum, now, searched)
        else:
            metrics.DUPLICATE_FILES.inc()
            if chain.file_spectra.get(file_key) is None:
                chain.file_spectra[file_key] = event.value
            chain.runs[run_key] = stored
    except QuaxError as exc:
        await reject(chain, event, chain.settings.spectra_topic, exc)
    done(chain, event)


async def search_candidates(chain: Chain, acc: RunAccumulator) -> detector_figures.SearchFigures | None:
    """Search the run's new average (docs/analysis.md); the run's candidates document goes to the
    `candidates` table, what changed to the `candidates` topic. Runs inside fold_spectra's stream
    iteration, so it may write tables. Returns the search's counts (None if it failed)."""
    key = acc.run.encode()
    stored = chain.candidates.get(key)
    config = replace(chain.search_config, lo_frequency_hz=chain.lo_frequency_hz(acc.run))
    try:  # candidates.search_run in two steps: the counts need the search result too
        result = spectrum_search.search_spectrum(acc.mean, acc.n_slices, acc.sample_rate_hz, config=config)
        doc, changed = candidates.update_candidates(candidates.decode(stored) if stored else None, result,
                                                    acc.run, acc.latest_file_index, acc.n_files,
                                                    config.persist_searches)
        value = candidates.encode(doc)
    except ValueError as exc:  # a spectrum the search cannot use: say so, keep folding
        log.warning("candidate search of run %s after file %d failed: %s", acc.run,
                    acc.latest_file_index, exc)
        return None
    chain.candidates[key] = value
    context = {k: doc[k] for k in ("run", "searched_file_index", "n_files", "n_slices",
                                   "threshold_sigma", "local_threshold_sigma")}
    for record in changed:
        await chain.candidates_topic.send(key=key, value=candidates.encode({**context, **record}))
    return detector_figures.search_figures(result, doc, changed, config.persist_searches)


def export_detector_figures(chain: Chain, acc: RunAccumulator, spectrum: wire.FileSpectrum,
                            folded_at_s: float, searched: detector_figures.SearchFigures | None) -> None:
    """The run's detector figures after this file (docs/metrics.md): its in-band power and noise
    level against the run's first file if it is the run's newest (highest index folded; spectra
    may be folded out of order), the power steps to the neighbouring files already folded (each
    pair of consecutive files is compared once, whichever of the two came last)."""
    config = chain.search_config
    band = detector_figures.in_band(spectrum.slice_len, spectrum.sample_rate_hz, config.search_band_fraction,
                                    config.dc_exclude_hz)

    newest = spectrum.file_index == acc.latest_file_index  # folded after a newer file: the gauges keep that one's

    @functools.cache  # this file's figures serve the gauges and both steps: computed once
    def figures_of(file_index: int) -> detector_figures.FileFigures | None:
        other = spectrum if file_index == spectrum.file_index else chain.file_spectrum(acc.run, file_index)
        return None if other is None else detector_figures.file_figures(other.mean, other.sample_rate_hz, band)

    here, ratio, steps = None, None, []
    try:
        for earlier, later in ((spectrum.file_index - 1, spectrum.file_index),
                               (spectrum.file_index, spectrum.file_index + 1)):
            if earlier in acc.files and later in acc.files:
                a, b = figures_of(earlier), figures_of(later)
                if a is not None and b is not None and a.inband_power_v2 > 0:
                    steps.append(detector_figures.relative_step(a.inband_power_v2, b.inband_power_v2))
        if newest:
            here, first = figures_of(spectrum.file_index), figures_of(next(iter(acc.files)))
            ratio = detector_figures.noise_ratio(here, first) if first is not None and first.noise_psd > 0 else None
    except (QuaxError, ValueError) as exc:  # a figure is not worth a rejected spectrum: say so, go on
        log.warning("detector figures of run %s file %d: %s", acc.run, spectrum.file_index, exc)
        here, ratio, steps = None, None, []
    spectra_topic = chain.settings.spectra_topic
    metrics.set_run_figures(
        acc.run, folded_at_s=folded_at_s, file=here, noise_ratio=ratio, steps=steps, search=searched,
        folds_here=lambda: any(tp.topic == spectra_topic for tp in chain.app.consumer.assignment()))


async def on_run_metadata(chain: Chain, event) -> None:
    """Keep a run's metadata record: merged with what is kept (it may grow, never change: a
    contradicting record is rejected with reason metadata_conflict)."""
    if faust_fixes.redelivered(event.message):
        return
    try:
        run, fields = run_meta.decode(event.value if isinstance(event.value, bytes) else b"")
        if event.key != run.encode():
            raise wire.WireError("key_mismatch", f"key {event.key!r} but the record is run {run!r}")
        merged = run_meta.merge(chain.metadata(run), fields, what=f"run {run}")
        chain.run_metadata[event.key] = run_meta.encode(run, merged)
    except QuaxError as exc:
        await reject(chain, event, chain.settings.metadata_topic, exc)
    done(chain, event)


def done(chain: Chain, event) -> None:
    """The event's effects are in the tables: its offset may be committed, and the consumer lag
    counts from the first offset not processed (faust_fixes.offsets)."""
    faust_fixes.note_processed(event.message, rebalancing=chain.app.rebalancing)


async def reject(chain: Chain, event, topic: str, exc: QuaxError) -> None:
    """Count a bad message, log it, and keep it on the dead-letter topic with its reason."""
    metrics.REJECTED.labels(topic=topic, reason=exc.reason).inc()
    log.warning("rejected message %s[%d]@%d: %s", topic, event.message.partition,
                event.message.offset, exc)
    source = f"{topic}/{event.message.partition}/{event.message.offset}"
    await chain.rejected_topic.send(key=event.key if isinstance(event.key, bytes) else None,
                                    value=event.value if isinstance(event.value, bytes) else b"",
                                    headers={"reason": exc.reason.encode(), "error": str(exc).encode()[:1000],
                                             "source": source.encode()})
