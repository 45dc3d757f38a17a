"""The live campaign: every run's average rebuilt from the ``spectra`` topic, analysed as one campaign.

``quax campaign-live`` (docs/analysis.md, "The live campaign") reads the spectra topic (one
partition, every finished file's spectrum, kept forever) and the metadata topic, folds each file
into its run exactly as the workers do (core.accumulators.RunAccumulator, in topic order), and after
each batch of new files updates the grand spectrum, rescan list and exclusion curve incrementally
(search.live_grand). It serves the result as JSON for the dashboard's campaign page, with
Prometheus metrics, and saves its state so that a restart resumes where it stopped.

    state.py      the fold and the analysis, no Kafka (CampaignState)
    snapshot.py   the state on disk, written atomically
    document.py   the JSON document served (/campaign/)
    service.py    the consumer loop, the web server, the metrics
"""
