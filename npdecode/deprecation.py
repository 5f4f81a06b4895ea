"""Old command-line spellings kept for one release, each with a warning."""

from __future__ import annotations


def deprecated_alias(old: str, new: str, value, current):
    """The value given under the deprecated spelling ``old`` (warned about on stderr), else ``current``."""
    if value is None:
        return current
    import click

    click.echo(f"warning: {old} is deprecated and will be removed; use {new}", err=True)
    return value
