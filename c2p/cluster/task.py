"""The callable a submitted job runs on every rank, and how a target string becomes a function.

A job pickles a :class:`ClusterTask` holding a target (``"package.module:function"``) and
its config; the job imports the target lazily, so submission needs neither torch nor
DeepSpeed. Targets live in the installed package (``c2p.*``), so a job unpickles on any node
that has c2p installed, whatever its working directory.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from c2p.cluster.errors import LaunchError

__all__ = ["ClusterTask", "resolve_target"]


def resolve_target(target: str) -> Callable[..., Any]:
    """``"package.module:function"`` → the function (imported in the job, not at submission)."""
    module, _, name = target.partition(":")
    if not module or not name:
        raise LaunchError(f"target {target!r}: expected 'package.module:function'")
    fn: Any = importlib.import_module(module)
    for part in name.split("."):
        fn = getattr(fn, part)
    return fn


class ClusterTask:
    """The callable a job runs on every rank: export the torch.distributed variables, then
    call ``target(cfg)`` (imported lazily inside the job, so submission needs neither torch
    nor DeepSpeed).

    ``checkpoint()`` is what submitit calls on preemption/timeout: it returns a *fresh*
    instance, and the requeued job resumes from the run's ``latest`` checkpoint because the
    target resumes by itself (``checkpoint.resume=auto``); no state travels in the pickle.
    """

    def __init__(self, target: str, cfg: Any, *, name: str = "") -> None:
        self.target, self.cfg, self.name = target, cfg, name or target

    def __call__(self) -> Any:
        from c2p.cluster.env import setup_env_from_cluster

        setup_env_from_cluster()
        return resolve_target(self.target)(self.cfg)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(type(self)(self.target, self.cfg, name=self.name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"
