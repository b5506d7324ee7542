"""The hospital side: ClientApp, local training and evaluation, site tooling."""

# the run-time defaults of common (no telemetry, no update checks, no installs) hold
# whichever package a process imports first
import common  # noqa: F401
