"""`report`: the generated sections of README.md and docs/*.md rewritten from the records (or only checked),
the role models' weights shipped and the figures drawn; or, with --out, a standalone report of any folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import report
from ..records import RESULTS_DIR
from .options import UsageError, add_data, add_model_args, entry_of


def report_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("report", help="regenerate the generated sections of README.md and docs/*.md from the records")
    s.add_argument("--results", default=str(RESULTS_DIR), help="folder of run records (default results/)")
    s.add_argument("--readme", default="README.md")
    s.add_argument("--docs", default="docs", help="folder of the documentation pages (every *.md in it)")
    s.add_argument("--check", action="store_true",
                   help="only check: fail (exit 2) if a page was out of date; draw and ship nothing")
    s.add_argument("--figures", default="docs/figures", help="folder for the PNG figures")
    s.add_argument("--no-figures", action="store_true")
    add_data(s, device=False, limit=None, data_dir="MNIST folder, for the final model's mistakes and confusion matrix")
    s.add_argument("--out", help="instead, write a standalone report (report.md and PNG figures) of the records in "
                                 "--results to this folder")
    s.add_argument("--model", help="with --out: your network's code (file.py:NAME), to load its checkpoints")
    add_model_args(s)
    return s


def cmd_report(args) -> None:
    from ..records import WEIGHTS_DIR
    from ..ship import ship_weights

    results = Path(args.results)
    if args.out:  # a standalone report of any folder of records; the project's docs stay as they are
        entries = {}
        if args.model:
            entry = entry_of(args.model, args.model_arg)
            entries[entry.name] = entry
        print(f"wrote {report.folder_report(results, Path(args.out), args.data_dir, entries)}")
        return
    pages = report.pages(Path(args.readme), Path(args.docs))
    changed = [str(page) for page in pages if report.update_page(page, results, write=not args.check)]
    if args.check and changed:
        raise UsageError(f"out of date with the records in {args.results}: {', '.join(changed)} "
                         "(run `tinymnist report`)")
    print(f"{', '.join(changed)}: updated" if changed else f"{len(pages)} pages up to date")
    if not args.check:
        for path in ship_weights(results, WEIGHTS_DIR):
            print(f"shipped {path}")
        if not args.no_figures:
            for path in report.draw_figures(results, Path(args.figures), args.data_dir):
                print(f"drew {path}")
