"""The words a reader sees for the report's codes: designs, tasks and flag kinds.

report.json names things by code (``loso``, ``drop-exceeds-margin``); the page shows
these names instead, and the code itself when it has none here.
"""

from __future__ import annotations

__all__ = [
    "DESIGN_NAMES",
    "DESIGN_NOTES",
    "FLAG_NAMES",
    "FLAG_SHORT",
    "HOLDOUT_WITHOUT_EXTERNAL_NOTE",
    "SEGMENTATION",
    "TASK_NAMES",
]

DESIGN_NAMES = {
    "holdout": "Hold-out",
    "loso": "Leave-one-site-out",
    "cross-site": "Cross-site",
}
# What each design trained and scored, said once in "How to read this report".
DESIGN_NOTES = {
    "holdout": "One federated (global) model was trained on the training sites. It was "
    "evaluated on each training site's held-out test patients (internal) and on the "
    "designated external sites, which never contributed training data (external).",
    "loso": "Leave-one-site-out: for every training site, a model was federated without it "
    "and evaluated on all of that site's patients. Each row of the per-site table is a site "
    "scored by the model that never saw it (external); internal figures are each site's "
    "test-split AUC averaged over the folds it trained in.",
    "cross-site": "Cross-site: the federated (global) model plus one model trained at each "
    "site alone, each evaluated at every site. The per-site table shows the global model; "
    "the model \u00d7 site matrix shows every combination.",
}
# The hold-out note of a run that no designated external site joined.
HOLDOUT_WITHOUT_EXTERNAL_NOTE = (
    "One federated (global) model was trained on the training sites and evaluated "
    "on each training site's held-out test patients (internal). No designated "
    "external site joined this run, so there is no external evaluation."
)

SEGMENTATION = "lesion-segmentation"
TASK_NAMES = {
    "lesion-malignancy": "Lesion malignancy classification",
    SEGMENTATION: "Lesion segmentation",
    "lesion-type": "Lesion type (benign, primary malignant, metastasis)",
}

FLAG_NAMES = {
    "below-prediction-interval": "Below prediction interval",
    "drop-exceeds-margin": "AUC drop exceeds margin",
    "insufficient-data": "Insufficient data",
    "no-evaluation": "No evaluation received",
    "gap-within-training-noise": "Gap within training noise",
}
# The same kinds in a few words, under a flag's number in the per-site table.
FLAG_SHORT = {
    "below-prediction-interval": "below PI",
    "drop-exceeds-margin": "drop > margin",
    "insufficient-data": "too few cases",
    "no-evaluation": "no report",
    "gap-within-training-noise": "gap within seed noise",
}
