"""The booking agent's evaluation, outside pytest: every conversation of
``tests/agent/conversations/`` through each model path, on SQLite in a temporary directory,
and the figures as a table (the logic is ``tests/agent/evaluation.py``).

    .venv/bin/python -m bench.agent_eval                       # both paths
    .venv/bin/python -m bench.agent_eval --path offline --only cancel --transcripts

Exits 1 if any conversation fails (its checks are printed). Results go to
``bench/results/agent_eval.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from base.logging import configure_logging
from bench.common import save
from tests.agent.evaluation import PATHS, evaluate_on_sqlite, failures, table, transcript
from tests.agent.scenarios import load


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--path", choices=PATHS, action="append", help="default: every path")
    ap.add_argument("--only", help="conversations whose id or theme contains this")
    ap.add_argument("--transcripts", action="store_true", help="print each conversation")
    args = ap.parse_args()
    configure_logging("warning")
    conversations = [
        c for c in load() if not args.only or args.only in c.id or args.only in c.theme
    ]
    rows, failed = [], False
    with tempfile.TemporaryDirectory(prefix="bench-agent-eval-") as tmp:
        for path in args.path or PATHS:
            results, figures = evaluate_on_sqlite(
                Path(tmp) / path, path=path, conversations=conversations
            )
            rows.append(figures)
            if args.transcripts:
                print("\n\n".join(transcript(r) for r in results), end="\n\n")
            if any(not r.passed for r in results):
                failed = True
                print(f"{path}: failed\n{failures(results)}\n", file=sys.stderr)
    print(table(rows))
    save("agent_eval", {"args": vars(args), "paths": [asdict(r) for r in rows]})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
