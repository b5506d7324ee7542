"""The coordinating side: ServerApp, strategies, update validation, run records."""
