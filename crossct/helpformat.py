"""One ``--help`` style for every command: defaults shown once, and only where they say something."""

from __future__ import annotations

import argparse

__all__ = ["DefaultsHelpFormatter"]


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already says its default,
    or the default says nothing (None, an empty list, a flag's False / True)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or default in (None, argparse.SUPPRESS, [], (), "")
                or isinstance(default, bool) or action.nargs == 0):
            return text
        return super()._get_help_string(action)
