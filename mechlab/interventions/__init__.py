"""Interventions: scoped hooks, activation patching, path patching and attribution patching."""
