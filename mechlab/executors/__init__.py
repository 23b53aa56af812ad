"""Executors: how a sweep's independent tasks run — in this process, or elsewhere.

A sweep builds its tasks and hands them to an ``Executor``, which returns one result per task in
task order and reports each result as it arrives (``on_result``), so the sweep fills its table and
its progress bar. The sweeps and their tasks:

- ``patch`` and ``path_patch``: a forward-sized batch of variants;
- ``attribution_patch``: the target's forward and backward pass, and the source's forward pass;
- ``run_detectors``: a batch of random sequences scored by every detector, and each weight detector;
- ``capture_dataset``: one shard, drawn lazily from the inputs; the manifest records shards in order;
- ``fit_probes`` (and ``train_probes``): one layer's probe and control probe;
- ``explain_prompts`` (``mechlab explain --prompts``): one prompt's report.

Each takes ``executor=`` (an instance, a registered name, or ``None``). The default, ``in-process``,
is a plain loop. Executors are an entry-point group, ``mechlab.executors``, read into a value
(``ExecutorRegistry.from_entry_points()``), like detectors and model sources: adding one is a module
and a registration line, and ``executor="name"`` (or an instance) picks it.

``mechlab.executors.ray.Ray`` runs the tasks on a Ray cluster (the optional extra ``ray``): the work
travels once per worker with each model replaced by what loads it (``mechlab.models.stand_in``), so
a sweep's work is a picklable object holding the model, not a closure over state built beside it.
"""

from mechlab.executors.base import GROUP, Executor, ExecutorRegistry, OnResult, resolve_executor
from mechlab.executors.in_process import InProcess

__all__ = ["GROUP", "Executor", "ExecutorRegistry", "InProcess", "OnResult", "resolve_executor"]
