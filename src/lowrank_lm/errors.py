"""The one exception type for mistakes a user can make (bad config, missing file, corrupt shard...).

The CLI turns a :class:`UserError` into one line on stderr and exit code 2, with no traceback.
Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user caused and can fix; the message names the problem and the fix."""


class ConfigError(UserError):
    """An invalid configuration key, value or combination."""
