"""Data files shipped with mechlab (probing datasets; see ``make_probe_data.py``)."""
