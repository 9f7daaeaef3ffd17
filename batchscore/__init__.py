"""batchscore: stream sharded datasets through ML models, fast, with bounded memory.

``batchscore.score(...)`` is the library entry point; ``batchscore run`` is a
thin CLI over it. Heavy libraries load lazily, so importing this is cheap.
"""

from ._version import __version__
from .errors import BatchscoreError, ExitStatus

__all__ = ["__version__", "score", "BatchscoreError", "ExitStatus"]


def __getattr__(name: str):
    if name == "score":
        from .api import score

        return score
    raise AttributeError(name)
