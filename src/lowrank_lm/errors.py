"""The one exception type for mistakes a user can make (bad config, missing file, corrupt shard...).

The CLI turns a :class:`UserError` into one line on stderr and exit code 2, with no traceback.
Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user caused and can fix; the message names the problem and the fix."""

    echo: bool = True
    """Whether this process prints the message. In a multi-process job every rank ends with the error the
    ranks agreed on, and only rank 0 prints it (see lowrank_lm.train.agreement)."""


EXIT_STOPPED = 75
"""Exit status of a ``train`` that stopped before its token budget (Ctrl-C, SIGTERM, SIGUSR1, --max-steps) after
writing a checkpoint: not finished, not failed; the same command (or ``lowrank-lm train RUN_DIR``) continues.
75 is EX_TEMPFAIL of sysexits.h, "try again later"."""


class PeerFailed(Exception):
    """Another process of a multi-process job failed and reports why itself; this one ends quietly (exit 1)."""


class ConfigError(UserError):
    """An invalid configuration key, value or combination."""
