"""Statistics for site-level performance: a documented public API of pure functions.

- ``delong_auc(y_true, y_score)``: AUC with its DeLong variance and Wald CI, as
  R pROC's ``auc()`` / ``var(method="delong")`` / ``ci.auc(method="delong")``.
"""

from common.stats.auc import AUCResult, delong_auc

__all__ = ["AUCResult", "delong_auc"]
