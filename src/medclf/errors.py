"""The one exception type for mistakes a user can fix.

Messages are one sentence that names the fix. They never contain raw input
text (medical text may hold patient data): name rows, columns, counts and
labels instead.
"""

from __future__ import annotations


class MedclfError(ValueError):
    """A user error: bad data, a bad option, a missing file. The CLI exits 2."""
