"""The `tinymnist` command: its parser, assembled from a table of commands, and `main`, which runs one.

Each command lives in a module that adds its options and runs it (`NAME_parser`, `cmd_NAME`):

    options.py   the argument types, and the option groups several commands share, each defined once
    info.py      models, summary, recipe
    train.py     train
    use.py       eval, predict, export, serve
    bench.py     bench (its modes in a table)
    scale.py     sweep, search (on Ray)
    report.py    report

Bad input ends with one line on stderr and exit status 2, never a traceback; see `main`.
"""

from __future__ import annotations

import os
import sys
import traceback

from ..errors import TinyMnistError, install_handlers, interrupted, interruption, received, restore_handlers
from ..records import release_locks, write_json
from .bench import bench_parser, cmd_bench
from .info import cmd_models, cmd_recipe, cmd_summary, models_parser, recipe_parser, summary_parser
from .options import Parser, UsageError, port, positive_float, positive_int, seed_int, seed_list
from .report import cmd_report, report_parser
from .scale import cmd_search, cmd_sweep, search_parser, sweep_parser
from .train import cmd_train, train_parser
from .use import cmd_eval, cmd_export, cmd_predict, cmd_serve, eval_parser, export_parser, predict_parser, serve_parser

__all__ = ["Parser", "UsageError", "build_parser", "main", "port", "positive_float", "positive_int", "seed_int",
           "seed_list", "write_json"]


def build_parser() -> Parser:
    p = Parser(prog="tinymnist", description="Design and train very small CNNs on MNIST under hard budgets.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    # in --help's order: the function adding each command and its options, and the one running it (read at each
    # call, so a command replaced here is the one that runs)
    commands = [
        (models_parser, cmd_models), (summary_parser, cmd_summary), (recipe_parser, cmd_recipe),
        (train_parser, cmd_train),
        (eval_parser, cmd_eval), (predict_parser, cmd_predict), (export_parser, cmd_export),
        (bench_parser, cmd_bench), (serve_parser, cmd_serve),
        (sweep_parser, cmd_sweep), (search_parser, cmd_search),
        (report_parser, cmd_report),
    ]
    for add, run in commands:
        add(sub).set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    # without __main__'s `run` (in-process, an old console script) the handlers are installed here, and restored
    previous = install_handlers()
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
        if received() is not None:  # a command (or a library) swallowed the interruption: it is one all the same
            raise interruption(received())
    except TinyMnistError as e:  # bad input; anything else is a bug and keeps its traceback
        if os.environ.get("TINYMNIST_DEBUG"):  # e.g. the traceback of the user's network that failed
            traceback.print_exception(e)
        print(f"tinymnist: error: {e}" if not str(e).startswith("tinymnist") else f"{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        return interrupted(e, argv)
    except BrokenPipeError:  # output piped into a reader that stopped early (`| head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        release_locks()
        restore_handlers(previous)
    return 0
