"""The one error of downstream evaluation: an input that cannot be evaluated.

Commands map it to exit status 2 (refused: nothing useful was written).
"""

from __future__ import annotations

__all__ = ["EvalError"]


class EvalError(ValueError):
    """Bad evaluation input (corpus, classes, checkpoint): the message names the input, value and expectation."""
