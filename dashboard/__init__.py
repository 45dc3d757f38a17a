"""The live dashboard: a Bokeh server app (``bokeh serve dashboard``) reading the workers' table views.

    feed.py     what is read from the workers (HTTP, off the event loop)
    shaping.py  pure data shaping: JSON and /metrics in, plot columns out
    page.py     the figures, widgets and update loop of one browser session
    main.py     the entry point Bokeh runs for each session
"""
