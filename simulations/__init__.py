"""Multi-center phantom data, scenarios, simulation drivers, the hepafed CLI."""
