"""`python -m flows.data_check [FILE.dvc]`: whether the data on disk is the data a .dvc file
records, in one line.

`make data` rebuilds the quickstart data offline and runs this. `dvc status` cannot answer
it on a fresh clone: with nothing in DVC's cache it prints `changed outs: not in cache: data`
whether the bytes match or not, which reads as a failure either way. This hashes the folder as
DVC does and compares it with the recorded hash; exit 1 on a mismatch.
"""

from __future__ import annotations

import sys

from align.core.errors import AlignError


def check(dvc_file: str) -> str:
    """A line per output, 'data: 9 files match data.dvc (md5 af5774d8dce0)', or AlignError
    naming the output that differs."""
    from dvc.repo import Repo
    from dvc_data.hashfile.build import build

    repo = Repo(".")
    lines = []
    for out in repo.stage.collect(dvc_file)[0].outs:
        _, meta, obj = build(
            repo.cache.local, out.fs_path, repo.fs, "md5", dry_run=True, ignore=out.dvcignore
        )
        found, recorded = obj.hash_info.value, out.hash_info.value
        if found != recorded:
            raise AlignError(
                f"{out.def_path}: the files differ from {dvc_file} (md5 {found} on disk, "
                f"{recorded} recorded); rebuild with `make data` or record them with "
                f"`dvc add {out.def_path}`"
            )
        lines.append(f"{out.def_path}: {meta.nfiles} files match {dvc_file} (md5 {recorded[:12]})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        print(check(args[0] if args else "data.dvc"))
    except AlignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
