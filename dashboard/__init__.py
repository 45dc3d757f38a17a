"""The live dashboard: a Bokeh server app (``bokeh serve dashboard``) reading the workers' table views,
and its campaign page (``/dashboard?page=campaign``) reading the live campaign (``quax campaign-live``).

    feed.py              what is read from the workers (HTTP, off the event loop)
    shaping.py           pure data shaping: JSON and /metrics in, plot columns out
    page.py              the figures, widgets and update loop of one browser session
    campaign_feed.py     what the campaign page reads from quax campaign-live (HTTP, off the event loop)
    campaign_shaping.py  pure shaping: the campaign document in, plot and table columns out
    campaign_page.py     the campaign page
    bokeh_session.py     a feed thread's result handed to the session; tables redrawn on new data
    main.py              the entry point Bokeh runs for each session: the page its URL asks for
"""
