"""The coordinating side: ServerApp, strategies, update validation, run records."""

# the run-time defaults of common (no telemetry, no update checks, no installs) hold
# whichever package a process imports first
import common  # noqa: F401
