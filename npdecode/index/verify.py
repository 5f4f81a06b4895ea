"""``npdecode verify DIR``: check an artifact dir's files against their recorded sizes and digests.

DIR is an index dir (the record is the ``checksums`` of its ``manifest.json``), a checkpoint dir
of ``npdecode train`` or a merge output (its ``checksums.json``), or a run dir holding such dirs
(each is checked). Every bad file is one line (missing, truncated, grown, corrupted, or a record
that cannot be read); exit status 0 when every recorded file is as recorded, 1 otherwise,
including an artifact written before npdecode recorded checksums (said in one line).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import click

from npdecode.errors import NpdecodeError
from npdecode.integrity import CHECKSUMS, Checksums, check, read_checksums

_KIND_MARKERS = ("manifest.json", CHECKSUMS, "segments", "config.json")  # what makes a dir an artifact


@dataclass
class Report:
    """What :func:`verify_artifact` found in one artifact dir."""

    path: Path
    kind: str  # "index", "checkpoint" (a checksums.json dir) or "unrecorded"
    files: int = 0  # recorded files checked
    problems: list[str] = field(default_factory=list)  # one line each

    @property
    def clean(self) -> bool:
        return self.kind != "unrecorded" and not self.problems


def verify_artifact(path: Path, *, digests: bool = True) -> Report:
    """Check one artifact dir (index, checkpoint, merge output) against its record."""
    from npdecode.index.manifest import FORMAT, MANIFEST, read_manifest

    manifest = path / MANIFEST
    if not manifest.is_file() and (path / "segments").is_dir():
        return Report(path, "index", 0, [f"{manifest}: missing (the index's table of contents); rebuild the index"])
    if manifest.is_file() and _format(manifest) in (FORMAT, None):
        try:
            checksums = read_manifest(path).checksums
        except NpdecodeError as err:  # a missing or damaged manifest: the index's table of contents
            return Report(path, "index", 0, [str(err)])
        return _checked(Report(path, "index"), checksums, digests)
    try:
        checksums = read_checksums(path)
    except NpdecodeError as err:
        return Report(path, "checkpoint", 0, [str(err)])
    return _checked(Report(path, "checkpoint"), checksums, digests)


def _format(manifest: Path) -> str | None:
    """A manifest's ``format``; None when it cannot be read (then it is checked as an index's)."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    return data.get("format") if isinstance(data, dict) else None


def _checked(report: Report, checksums: Checksums | None, digests: bool) -> Report:
    if checksums is None:
        report.kind = "unrecorded"
        return report
    report.files = len(checksums.files)
    report.problems = [str(p) for p in check(report.path, checksums, digests=digests)]
    return report


def artifact_dirs(path: Path) -> list[Path]:
    """``[path]`` for an artifact dir; for a run dir, the artifact dirs in it (index/,
    checkpoint/, backbone/ ...); NpdecodeError when there is none."""
    from npdecode.index.manifest import FORMAT, MANIFEST

    if not path.is_dir():
        raise NpdecodeError(f"{path}: no such directory")
    run_manifest = (path / MANIFEST).is_file() and _format(path / MANIFEST) not in (FORMAT, None)
    if not run_manifest and any((path / m).exists() for m in _KIND_MARKERS):
        return [path]
    found = sorted(c for c in path.iterdir() if c.is_dir() and any((c / m).exists() for m in _KIND_MARKERS))
    if not found:
        raise NpdecodeError(
            f"{path}: not an npdecode artifact dir (no manifest.json or {CHECKSUMS}); "
            "point it at an index dir, a checkpoint dir, a merge output or a run dir"
        )
    return found


def describe(report: Report) -> str:
    """The summary line of one artifact dir."""
    if report.kind == "unrecorded":
        return (
            f"{report.path}: no recorded checksums (written before npdecode recorded them); "
            "nothing to verify: write it again to record them"
        )
    if report.problems and not report.files:
        return f"{report.path} ({report.kind}): its record cannot be read"
    if report.problems:
        return f"{report.path} ({report.kind}): {len(report.problems)} of {report.files} recorded files bad"
    return f"{report.path} ({report.kind}): all {report.files} recorded files intact"


@click.command("verify")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--sizes-only", is_flag=True, help="Compare sizes only (no file is read).")
def verify_command(artifact: Path, sizes_only: bool) -> None:
    """Check every file of ARTIFACT (an index dir, checkpoint dir, merge output or run dir)
    against its recorded size and xxh3_64 digest; list the missing, truncated and corrupted
    ones. Exit status 0 when all are intact, 1 otherwise.

    \b
    Example:  npdecode verify runs/scifact/index
    """
    clean = True
    for path in artifact_dirs(artifact):
        report = verify_artifact(path, digests=not sizes_only)
        for line in report.problems:
            click.echo(line)
        click.echo(describe(report))
        clean = clean and report.clean
    if not clean:
        raise click.exceptions.Exit(1)
