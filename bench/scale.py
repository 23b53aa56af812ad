"""Benchmark: a 64-prompt patching sweep on SmolLM2 with 1 and 2 Ray workers, and Ray's per-task overhead.

The sweep: 64 IOI prompts of one token length ("When {A} and {B} went to the store, {B} gave a drink
to" → " {A}"; corrupted: the second {B} replaced by a third name), metric logit(A) − logit(B) per
prompt, every layer's ``attn_out`` patched in (denoising), 64 rows per forward pass: one variant of
all 64 prompts per task. In one run, side by side:

1. in-process, for reference (``--threads``, default 1: a Ray worker's one thread, so that the
   1-worker run shows what Ray adds);
2. ``Ray(num_workers=1)`` and ``Ray(num_workers=2)`` on a local Ray instance, each worker one CPU
   (Ray pins a worker to 1 torch thread): after a warm-up (the actors start, load SmolLM2 and run
   one variant each), the timed sweep; the ratio is 1-worker time / 2-worker time; the results are
   checked to equal the in-process ones (each worker builds its own unpatched run and source
   activations, once per sweep: that setup is part of the timed sweep);
3. 16 tasks that sleep 0.25 s each (no CPU) on 1 and 2 workers: how the scheduling itself scales;
4. the round trip of an empty task (``map(identity, range(N))`` on warm actors), per task;
5. what travels: the pickled sweep description (the work, with the model as its ``StandIn``) and one
   task's inputs, in bytes.

On a machine whose cores other jobs share, the 2-worker speed-up is bounded by the cores free at the
time; the load average is printed beside the figures.

Run: ``.venv/bin/python bench/scale.py`` (``--prompts``, ``--kind``, ``--overhead-tasks`` to change
the sizes).
"""

import argparse
import os
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch

import mechlab
from mechlab.executors.ray import Ray, dumps

NAMES = [" Mary", " John", " Tom", " James", " Anna", " Paul", " Kate", " Mark", " Lisa", " David"]
STORE_BYTES = 256 * 1024**2


def identity(x: Any) -> Any:
    return x


def nap(seconds: float) -> float:
    """A task that takes ``seconds`` and no CPU: what the scheduler alone makes of 1 and 2 workers."""
    time.sleep(seconds)
    return seconds


class Sizes:
    """An executor that records the pickled size of the work and of the first task, then runs them
    in this process."""

    name = "sizes"

    def __init__(self) -> None:
        self.work_bytes = self.task_bytes = self.n_tasks = 0

    def map(self, work: Callable[[Any], Any], tasks: Iterable[Any], *, on_result: Any = None) -> list[Any]:
        tasks = list(tasks)
        self.work_bytes, self.task_bytes, self.n_tasks = len(dumps(work)), len(dumps(tasks[0])), len(tasks)
        return mechlab.InProcess().map(work, tasks, on_result=on_result)


def prompts(model: Any, n: int) -> tuple[list[str], list[str], list[str], list[str]]:
    """``n`` IOI prompts (clean, corrupted) with their answer and wrong names, all one token length."""
    clean, corrupted, answers, wrongs = [], [], [], []
    for i in range(n):
        a, b, c = NAMES[i % 10], NAMES[(i // 10 + i + 1) % 10], NAMES[(i + 5) % 10]
        if len({a, b, c}) < 3:
            c = next(x for x in NAMES if x not in (a, b))
        template = "When{a} and{b} went to the store,{c} gave a drink to"
        clean.append(template.format(a=a, b=b, c=b))
        corrupted.append(template.format(a=a, b=b, c=c))
        answers.append(a)
        wrongs.append(b)
    lengths = {model.to_tokens(p).shape[1] for p in clean + corrupted}
    assert len(lengths) == 1, f"prompts of several token lengths: {lengths}"
    return clean, corrupted, answers, wrongs


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument(
        "--kind", default="attn_out", help="the site kind swept (default attn_out: 30 layers)"
    )
    parser.add_argument("--overhead-tasks", type=int, default=200)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the in-process run (default 1, as a worker)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    model = mechlab.load_model("smollm2").model
    clean, corrupted, answers, wrongs = prompts(model, args.prompts)
    metric = mechlab.LogitDiff.from_text(model, answers, wrongs)
    clean_tokens, corrupted_tokens = model.to_tokens(clean), model.to_tokens(corrupted)
    rows = args.prompts  # one variant of every prompt per forward pass, so one variant per task

    def sweep(executor: Any, sites: Any = args.kind) -> mechlab.PatchResult:
        return mechlab.patch(
            model, clean_tokens, corrupted_tokens, sites, metric, batch_size=rows, executor=executor
        )

    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
        f"{args.prompts} prompts × {clean_tokens.shape[1]} tokens, sweep of {args.kind!r}"
    )
    sizes = Sizes()
    reference, t_here = timed(lambda: sweep(sizes))
    print(f"in-process ({torch.get_num_threads()} torch threads): {t_here:6.1f} s, {sizes.n_tasks} tasks")
    print(
        f"shipped: sweep description {sizes.work_bytes / 1024:.1f} KiB once per worker, "
        f"a task {sizes.task_bytes} B"
    )

    import ray

    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=STORE_BYTES,
        include_dashboard=False,
        log_to_driver=False,
    )
    timings: dict[int, float] = {}
    naps: dict[int, float] = {}
    last = int(model.cfg.n_layers) - 1
    for workers in (1, 2):
        executor = Ray(num_workers=workers)
        # Warm-up: one variant per actor, so every actor has started and loaded SmolLM2.
        warmup = mechlab.Sweep(args.kind, layers=tuple(range(last - workers + 1, last + 1)))
        _, t_start = timed(partial(sweep, executor, warmup))
        result, t_sweep = timed(partial(sweep, executor))
        timings[workers] = t_sweep
        same = torch.equal(result.per_prompt, reference.per_prompt)
        print(
            f"ray, {workers} worker(s): {t_sweep:6.1f} s (after {t_start:.1f} s to start the actors, load "
            f"SmolLM2 and run one variant each); equal to in-process: {same}; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        _, t_naps = timed(partial(executor.map, nap, [0.25] * 16))
        naps[workers] = t_naps
        if workers == 2:
            _, t_empty = timed(partial(executor.map, identity, range(args.overhead_tasks)))
            print(
                f"empty task round trip: {1000 * t_empty / args.overhead_tasks:.2f} ms per task "
                f"({args.overhead_tasks} tasks on 2 warm actors, {t_empty:.2f} s)"
            )
        executor.release()
    print(f"1-worker / 2-worker time: {timings[1] / timings[2]:.2f}")
    print(
        f"16 tasks of 0.25 s that use no CPU: {naps[1]:.2f} s on 1 worker, {naps[2]:.2f} s on 2 "
        f"(ratio {naps[1] / naps[2]:.2f}: the scheduler's own scaling, whatever the CPU load)"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
