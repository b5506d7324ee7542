"""Watching a deployed model over time (``hepafed monitor``).

- ``store``: the monitoring folder of one model, a signed append-only chain of window
  summaries linked to the model's sealed training trail;
- ``analysis``: per-site time series, sequential change detection (CUSUM) with a false-alarm
  rate fixed in advance, alarms kept apart from drift notices, acquisition changes, and the
  label-free estimate checked against the labels that arrived;
- ``model``: the typed ``monitor.json`` and its published JSON Schema;
- ``html``, ``terminal``: the self-contained ``monitor.html`` and the terminal summary;
- ``design``: the ServerApp's ``monitor`` design (simulation and deployment alike).
"""
