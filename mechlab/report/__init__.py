"""``mechlab.explain``: the one-call report of why the model said what it said — the pipeline
(``explain``), its settings, the run manifest and detector cache, and the offline page and JSON
summary it writes."""
