"""The hospital side: ClientApp, local training and evaluation, site tooling."""
