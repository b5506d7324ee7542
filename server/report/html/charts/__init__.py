"""The report's charts, each an inline, accessible SVG built from report data alone.

- ``svg``: the shared pieces: ``Ids`` (page-unique element ids), ``figure_svg`` (the
  ``<svg role="img">`` wrapper with ``<title>``/``<desc>``), colours, ``SITE_PALETTE``
  and ``site_colours``, markers, text, lines and axis ticks.
- ``numbers``: how the charts write numbers (``fmt``, ``fmt_ci``, ``fmt_sig``).
- ``forest``: ``forest_svg``, a measure per site with pooled diamonds and prediction
  intervals.
- ``roc``: ``roc_svg``, ROC step curves per site.
- ``reliability``: ``reliability_svg``, one site's calibration bins.
- ``drift``: ``drift_svg``, embedding drift against AUC drop.
- ``timeline``: ``timeline_svg``, a monitored site's estimated and actual AUC by window
  (``monitor.html``).
- ``cusum``: ``cusum_svg``, one monitoring chart's CUSUM against its limit.

Each chart function returns ``markupsafe.Markup``, ready for a Jinja2 template; every
text that comes from the report is escaped inside it.
"""
