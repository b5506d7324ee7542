"""The cross-site report: the ``report.json`` document, its terminal and HTML views.

- ``build``: from the sites' evaluation summaries to the document (statistics from
  ``common.stats``);
- ``files``: a run folder to ``report.json`` and ``report.html``, loading and upgrading
  older documents, schema validation;
- ``terminal``: the summary printed after a run;
- ``html``: the self-contained HTML page;
- ``privacy``: the privacy accounting block;
- ``comparison``: several methods over several seeds (``hepafed simulate --compare``).

Importing this package loads none of them; the views import nothing of the runtime
(torch, Flower, MONAI), so a report renders anywhere.
"""
