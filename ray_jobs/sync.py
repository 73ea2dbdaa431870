"""Copy a folder between local disk and a store (s3://, gs://, file://), e.g. to stage a job's inputs.

    python -m ray_jobs.sync SOURCE DESTINATION [--exclude 'audio/*' ...]

Every file under SOURCE lands at the same relative path under DESTINATION; files already there
with the same size are skipped, so a rerun continues an interrupted copy. It is for jobs whose
libraries need files on local disk (pretrain: tokenizer training and the token cache read MIDI
paths), chained in one `ray job submit` entrypoint: sync in, run, sync out.
Exit status: 0 done, 2 missing source or unusable location.
"""

from __future__ import annotations

import argparse
import sys
import time

from embedders import storage


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.sync", description=__doc__.split("\n")[0])
    p.add_argument("source", help="folder: a path or a URI")
    p.add_argument("destination", help="folder: a path or a URI")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="relative paths to leave out, e.g. 'audio/*' (repeatable)")
    args = p.parse_args(argv)
    started = time.perf_counter()
    try:
        copied, skipped = storage.copy_tree(args.source, args.destination, exclude=tuple(args.exclude))
    except (storage.StorageError, OSError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"sync {args.source} -> {args.destination}: copied {copied}, already there {skipped} "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
