"""Where the local fits run: serially, in a local process pool, or on Dask.

Every backend runs the same plain function on the same tasks and returns the
same list of ``(index, LocalMessage or ShardError)`` in task order, so the
model does not depend on the backend.

- "serial": one fit after another in this process.
- "local": joblib's loky process pool. Its workers do not re-import the
  caller's ``__main__``, so a plain script, ``python -`` and a notebook
  work without an ``if __name__ == "__main__":`` guard (a spawn pool of the
  standard library re-runs the script in every worker and breaks there).
- "dask": a dask.distributed Client, the user's (never closed here) or a
  LocalCluster started and closed for the call. Task keys are unique to each
  call, so concurrent fits on one client cannot take each other's results.
"""

from __future__ import annotations

import uuid

BACKENDS = ("local", "serial", "dask")


def run(backend: str, func, tasks: list, *, n_jobs: int, client=None, bar=None,
        timeout: float | None = None) -> list:
    """[func(*task) for task in tasks] on ``backend``, in task order. With
    ``timeout``, a task that runs longer than that many seconds gives
    ``(index, ShardError)`` (its first argument is its index) instead."""
    runner = {"serial": _serial, "local": _local, "dask": _dask}[backend]
    if timeout is not None:
        tasks = [(func, timeout, *t) for t in tasks]
        func = timed_call
    return runner(func, tasks, n_jobs=n_jobs, client=client, bar=bar)


def timed_call(func, timeout: float, index, *args):
    """``func(index, *args)``, or ``(index, ShardError)`` when it has not
    returned after ``timeout`` seconds. It runs in a daemon thread of the
    process that calls this (a worker, on the parallel backends), which is
    left to finish on its own: Python cannot stop a thread, but nothing
    waits for it."""
    import threading

    from .exceptions import ShardError

    box = []
    worker = threading.Thread(target=lambda: box.append(_caught(func, index, *args)),
                              daemon=True, name=f"fastmoe-shard-{index}")
    worker.start()
    worker.join(timeout)
    if not box:
        return index, ShardError(index, f"timed out after {timeout:g} s (shard_timeout)")
    kind, value = box[0]
    if kind == "raised":
        raise value
    return value


def _caught(func, *args):
    try:
        return "returned", func(*args)
    except BaseException as exc:  # noqa: BLE001 (raised again in the caller's thread)
        return "raised", exc


def _tick(bar):
    if bar is not None:
        bar.update()


def _serial(func, tasks, *, n_jobs, client, bar):
    out = []
    for t in tasks:
        out.append(func(*t))
        _tick(bar)
    return out


def _local(func, tasks, *, n_jobs, client, bar):
    from joblib import Parallel, delayed

    out = []
    parallel = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator")
    try:
        for result in parallel(delayed(func)(*t) for t in tasks):
            out.append(result)
            _tick(bar)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM in the CLI): no worker is left
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=False, kill_workers=True)
        raise
    return out


def _dask(func, tasks, *, n_jobs, client, bar):
    try:
        from dask.base import tokenize
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ValueError('backend="dask" needs dask.distributed '
                         '(pip install "fastmoe[dask]").') from None
    own = client is None
    if own:
        cluster = LocalCluster(processes=True, threads_per_worker=1, dashboard_address=":0")
        client = Client(cluster)
    try:
        call = uuid.uuid4().hex  # this call's own keys, even for identical tasks
        futures = [client.submit(func, *t, pure=False,
                                 key=f"fastmoe-shard-{i}-{tokenize(call, i)}")
                   for i, t in enumerate(tasks)]
        for _ in as_completed(futures):
            _tick(bar)
        return client.gather(futures)
    finally:
        if own:
            client.close()
            cluster.close()
