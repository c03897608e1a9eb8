"""Results as data: the generated sections of README.md and docs/*.md, and a report of any folder of records.

A generated section is the text between `<!-- BEGIN key -->` and `<!-- END key -->`; `update_page` rewrites
every such section of a page from the records in `results/` (runs) and `results/bench/` (timings) and from the
registry, so no figure in the README or the docs is typed by hand. The verdicts in them are the judge's
(`judge.py`); shipping the role models' weights is `ship.py`'s.

Section keys (`sections.SECTIONS`): `headline` (the README's results box), `overview` (one row per step),
`step:MODEL` (a step's Results), `seeds`, `seed-detail:MODEL`, `verdict:MODEL`, `targets`, `final-choice` (the
rule and the margins), `val:MODEL`, `search:MODEL`, `models`, `summary:MODEL`, `bench`, `baseline-method`,
`null-commits`, `other-seeds`.

    common.py    its error, links, the full-data records of a model, the judge's rule applied to them
    tables.py    targets, seeds, a model's seeds epoch by epoch, models, the overview, other seeds
    bench.py     the Performance section: benchmark records checked and rendered by their kind
    sections.py  the prose sections and the table of every section
    pages.py     the pages' sections rewritten, and the README's figures
    folder.py    `report --out`: any folder of records, judged by each record's budget
"""

from ..judge import GOALS, HOLD, TARGET, Goal, assess, held_and_mean, verdict
from .bench import BENCH_FIELDS, baseline_method, bench_kind, bench_records, bench_tables, end_to_end_record
from .common import (
    DOC_COLUMNS,
    DOCS,
    OTHER_SEEDS,
    ReportError,
    epoch_ranges,
    link,
    load_records,
    require_records,
    role_holder,
    roles_from_records,
    slug,
    training_steps,
)
from .folder import folder_report, folder_table, record_budget
from .pages import draw_figures, pages, render, render_readme, role_records, update_page
from .sections import (
    SECTIONS,
    final_choice,
    headline,
    hold_sentence,
    load_search_record,
    null_commits,
    search_section,
    section,
    step_results,
    val_section,
)
from .tables import models_table, other_seeds, overview, seed_detail, seeds_table, targets_table

# the judge's names (GOALS, HOLD, TARGET, Goal, assess, held_and_mean, verdict) are here too: the report's
# callers imported them from here before judge.py
__all__ = [
    "BENCH_FIELDS", "DOCS", "DOC_COLUMNS", "GOALS", "HOLD", "OTHER_SEEDS", "SECTIONS", "TARGET", "Goal", "ReportError",
    "assess", "baseline_method", "bench_kind", "bench_records", "bench_tables", "draw_figures", "end_to_end_record",
    "epoch_ranges", "final_choice", "folder_report", "folder_table", "headline", "held_and_mean", "hold_sentence",
    "link", "load_records", "load_search_record", "models_table", "null_commits", "other_seeds", "overview", "pages",
    "record_budget", "render", "render_readme", "require_records", "role_holder", "role_records", "roles_from_records",
    "search_section", "section", "seed_detail", "seeds_table", "slug", "step_results", "targets_table",
    "training_steps", "update_page", "val_section", "verdict",
]
