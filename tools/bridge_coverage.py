"""Run the torch bridge on onnx's backend node tests and print (or, with --write, save) docs/bridge_ops.md.

    python tools/bridge_coverage.py           # print the table
    python tools/bridge_coverage.py --write   # rewrite docs/bridge_ops.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from onnxjpq.finetune.torchops.coverage import measure, render

DOC = Path(__file__).resolve().parent.parent / "docs" / "bridge_ops.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {DOC.name} instead of printing it")
    args = parser.parse_args()
    start = time.perf_counter()
    text = render(*measure())
    seconds = time.perf_counter() - start
    if args.write:
        DOC.write_text(text)
        print(f"wrote {DOC} ({seconds:.1f} s)")
    else:
        print(text)
        print(f"({seconds:.1f} s)")


if __name__ == "__main__":
    main()
