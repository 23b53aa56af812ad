"""Rendering: matplotlib figures and self-contained, offline HTML."""
