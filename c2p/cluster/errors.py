"""The two ways a job can go wrong from the submitter's side: refused, or failed after submission.

Launchers map them to exit codes: :class:`LaunchError` → 2 (nothing was submitted or left
behind), :class:`JobFailedError` → 1 (the job ran and failed; the message names its logs).
"""

from __future__ import annotations

__all__ = ["LaunchError", "JobFailedError"]


class LaunchError(RuntimeError):
    """A job that cannot be (or was not) submitted: the message says why."""


class JobFailedError(LaunchError):
    """A submitted job (or array element) ended without a result: the message names its logs."""
