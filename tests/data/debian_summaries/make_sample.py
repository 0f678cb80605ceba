"""Rebuild this folder's (document, summary) sample from a Debian system's package database.

Each installed package's long description is a document and its one-line synopsis the summary
a human wrote for it: real headline-style summaries. Pairs are deduplicated by document, kept
when the document has >= 15 words, ordered by package name and cut 80/10/10 into
train/valid/test. The committed files came from `python make_sample.py /var/lib/dpkg/status` on
the project's Debian 12 build machine (825 packages).
"""

import re
import sys
from pathlib import Path


def pairs(status: str) -> list[tuple[str, str, str]]:
    out, seen = [], set()
    for block in status.split("\n\n"):
        name = re.search(r"^Package: (\S+)", block, re.M)
        desc = re.search(r"^Description: (.*)\n((?: .*\n?)*)", block, re.M)
        if not name or not desc:
            continue
        summary = desc.group(1).strip()
        lines = [line.strip() for line in desc.group(2).splitlines()]
        document = " ".join(line for line in lines if line and line != ".")
        document = document.replace("\t", " ")
        if len(document.split()) < 15 or document in seen:
            continue
        seen.add(document)
        out.append((name.group(1), document, summary))
    return sorted(out)


def main() -> None:
    rows = pairs(Path(sys.argv[1] if len(sys.argv) > 1 else "/var/lib/dpkg/status").read_text())
    n = len(rows)
    cuts = {"train": rows[: n * 8 // 10], "valid": rows[n * 8 // 10 : n * 9 // 10],
            "test": rows[n * 9 // 10 :]}  # fmt: skip
    here = Path(__file__).parent
    for split, part in cuts.items():
        text = "package\tdocument\tsummary\n" + "".join(f"{p}\t{d}\t{s}\n" for p, d, s in part)
        (here / f"{split}.tsv").write_text(text, encoding="utf-8")
        print(split, len(part))


if __name__ == "__main__":
    main()
