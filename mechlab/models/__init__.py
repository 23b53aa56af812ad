"""Model sources: one module per source, ``load.py`` dispatches, ``verify.py`` checks fidelity."""
