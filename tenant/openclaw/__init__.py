"""The OpenClaw tenant image: pins in versions.toml, recipe in the Dockerfile, build and
content-hash tagging in build.py (`python -m tenant.openclaw.build` prints the tag)."""
