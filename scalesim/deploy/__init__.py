"""Deploying a stage: on this machine (`local`), or as files for real engines (compose, Kubernetes)."""
