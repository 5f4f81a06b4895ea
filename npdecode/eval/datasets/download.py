"""Downloads into the cache: atomic, resumable by re-running, with a progress bar."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from npdecode.atomic import atomic_dir, atomic_file


class DownloadError(Exception):
    """The machine could not fetch a URL (offline, 404, …)."""


def fetch(url: str, dest: Path, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` (skipped when ``dest`` exists); progress on stderr."""
    from tqdm.auto import tqdm

    if dest.is_file():
        return dest
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise DownloadError(f"{url}: {getattr(err, 'reason', err)}") from None
    total = int(response.headers.get("Content-Length") or 0) or None
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}")
    with response, atomic_file(dest, "wb") as fh, bar:
        for block in iter(lambda: response.read(1 << 20), b""):
            fh.write(block)
            bar.update(len(block))
    return dest


def fetch_zip(url: str, target: Path) -> Path:
    """Download a zip and unpack it so that ``target`` appears complete or not at all."""
    if target.is_dir():
        return target
    archive = fetch(url, target.parent / f"{target.name}.zip")
    with atomic_dir(target, overwrite=True) as tmp, zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp)
        # BEIR zips hold one top-level folder named like the dataset: lift its content up.
        inner = [p for p in tmp.iterdir() if not p.name.startswith("__MACOSX")]
        if len(inner) == 1 and inner[0].is_dir():
            for item in inner[0].iterdir():
                shutil.move(str(item), tmp / item.name)
            inner[0].rmdir()
    archive.unlink()
    return target
