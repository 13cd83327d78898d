"""Writes the .deb's copyright file (machine-readable, DEP-5) from the packages in the venv:
one paragraph per distribution, its files, its license as its own metadata states it, and
where its license texts are installed. Run by scripts/build-deb with the build host's Python.

    python3 packaging/deb/copyright.py STAGED_SITE_PACKAGES INSTALLED_SITE_PACKAGES OUT
"""

from __future__ import annotations

import re
import sys
from email.message import Message
from importlib.metadata import Distribution, distributions
from pathlib import Path

FORMAT = "https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
OWN = "station-agent"
# Classifier -> SPDX, for distributions that state their license only as a classifier.
CLASSIFIERS = {
    "Apache Software License": "Apache-2.0",
    "MIT License": "Expat",
    "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
}
# Free-text License: fields seen in the dependencies, as SPDX.
FREE_TEXT = {"Apache 2.0": "Apache-2.0", "MIT": "Expat"}

HEADER = f"""Format: {FORMAT}
Upstream-Name: station-agent
Comment: The program under /opt/station-agent is station-agent and the Python packages it
 runs, installed from their wheels at the versions of constraints.txt. Wheels with compiled
 code bundle native libraries (the *.libs folders: FFmpeg and its codecs in av and
 opencv-python-headless, OpenBLAS in numpy, ...): each wheel lists them and their licenses
 in its own files, named below for each package.

Files: *
Copyright: 2024-2026 the station-agent authors
License: not-yet-chosen
"""

OWN_LICENSE = """License: not-yet-chosen
 No license has been chosen for station-agent yet: all rights are reserved by its authors.
"""


def license_of(meta: Message) -> str:
    expression = meta.get("License-Expression")
    if expression:
        return expression
    for classifier in meta.get_all("Classifier") or []:
        name = classifier.rsplit(" :: ", 1)[-1]
        if classifier.startswith("License ::") and name in CLASSIFIERS:
            return CLASSIFIERS[name]
    text = (meta.get("License") or "").strip()
    if text and "\n" not in text:
        return FREE_TEXT.get(text, text)
    return "unknown"


def dep5_name(spdx: str) -> str:
    """SPDX expression -> DEP-5 short names (lower-case 'or'/'and', MIT as Expat)."""
    words = [w.lower() if w in ("OR", "AND") else w for w in spdx.split()]
    return " ".join("Expat" if w == "MIT" else w for w in words)


def top_levels(dist: Distribution) -> list[str]:
    names = {str(f).split("/", 1)[0] for f in dist.files or [] if not str(f).startswith("..")}
    return sorted(names)


def license_files(dist: Distribution, installed: str) -> list[str]:
    pattern = re.compile(r"(licen[cs]e|copying|notice|authors|3rd-party)", re.I)
    return sorted(
        f"/{installed}/{f}"
        for f in dist.files or []
        if ".dist-info/" in str(f) and pattern.search(Path(str(f)).name)
    )


def paragraph(dist: Distribution, installed: str) -> str:
    meta = dist.metadata
    files = " ".join(f"{installed}/{name}/*" for name in top_levels(dist))
    author = meta.get("Author") or meta.get("Author-email") or meta.get("Maintainer") or ""
    holder = f"the {meta['Name']} authors" + (f" ({author.strip()})" if author else "")
    texts = license_files(dist, installed)
    where = "; ".join(texts) if texts else "the package's metadata"
    return (
        f"Files: {wrap(files)}\n"
        f"Copyright: {holder}\n"
        f"License: {dep5_name(license_of(meta))}\n"
        f" {meta['Name']} {meta['Version']}: the license texts are in\n"
        f" {wrap(where)}\n"
    )


def wrap(text: str) -> str:
    """Long values continue on lines starting with a space (DEP-5, like deb822)."""
    words, lines, line = text.split(" "), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > 78:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\n ".join(lines)


def main(staged: str, installed: str, out: str) -> None:
    dists = sorted(distributions(path=[staged]), key=lambda d: d.metadata["Name"].lower())
    parts = [HEADER]
    parts += [paragraph(d, installed.strip("/")) for d in dists if d.metadata["Name"] != OWN]
    parts.append(OWN_LICENSE)
    Path(out).write_text("\n".join(parts), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:4])
