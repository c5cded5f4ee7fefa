"""The object catalog the back-ends serve: deterministic files of known sizes and sha256.

Files are generated once into a cache directory shared by all testbed instances (the bytes depend
only on the size), so bringing a testbed up does not rewrite 120 MB each time.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("MIRESGA_OBJECTS", "/var/tmp/miresga-objects"))
OBJ_PREFIX = "/obj/"
KiB, MiB = 1 << 10, 1 << 20
# The object sizes of the paper's evaluation (Shi et al., WWW 2025): `miresga bench --paper`.
PAPER_SIZES: tuple[int, ...] = (KiB, 4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, MiB, 4 * MiB, 8 * MiB)


def size_name(size: int) -> str:
    for unit, n in (("m", 1 << 20), ("k", 1 << 10)):
        if size >= n and size % n == 0:
            return f"{size // n}{unit}"
    return f"{size}b"


@dataclass(frozen=True)
class CatalogObject:
    path: str      # URL path, e.g. /obj/1m
    size: int
    sha256: str
    file: Path


def _generate(file: Path, size: int) -> str:
    rnd = random.Random(size)  # content depends only on the size
    h = hashlib.sha256()
    tmp = file.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        left = size
        while left:
            chunk = rnd.randbytes(min(left, 1 << 20))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    tmp.rename(file)
    return h.hexdigest()


def ensure_catalog(sizes: list[int], root: Path = CACHE) -> list[CatalogObject]:
    objdir = root / "obj"
    objdir.mkdir(parents=True, exist_ok=True)
    manifest_file = root / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
    out = []
    for size in sorted(set(sizes)):
        name = size_name(size)
        f = objdir / name
        entry = manifest.get(name)
        if not (f.exists() and entry and entry["size"] == size and f.stat().st_size == size):
            manifest[name] = {"size": size, "sha256": _generate(f, size)}
            manifest_file.write_text(json.dumps(manifest, indent=1))
        out.append(CatalogObject(OBJ_PREFIX + name, size, manifest[name]["sha256"], f))
    return out
