"""Executors: how a sweep's independent tasks run — in this process, or elsewhere.

A sweep (patching's batches of variants, path patching's) builds a list of tasks and hands them to an
``Executor``, which returns one result per task in task order and reports each result as it arrives
(``on_result``), so the sweep fills its table and its progress bar. The default, ``in-process``, is a
plain loop. Executors are an entry-point group, ``mechlab.executors``, read into a value
(``ExecutorRegistry.from_entry_points()``), like detectors and model sources: adding one is a module
and a registration line, and ``executor="name"`` (or an instance) picks it.
"""

from mechlab.executors.base import GROUP, Executor, ExecutorRegistry, OnResult, resolve_executor
from mechlab.executors.in_process import InProcess

__all__ = ["GROUP", "Executor", "ExecutorRegistry", "InProcess", "OnResult", "resolve_executor"]
