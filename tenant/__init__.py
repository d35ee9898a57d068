"""Images of the agents Clawfleet hosts for its tenants, built from the registries a
worker and CI can reach (PyPI, npm, Debian), never pulled from an image registry."""
