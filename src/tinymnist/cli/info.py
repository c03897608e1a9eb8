"""`models`, `summary` and `recipe`: what the registry holds, a network's layers, a recipe resolved."""

from __future__ import annotations

import argparse
import json

from ..model import REGISTRY, create_model, get_entry
from ..recipes import RECIPES, format_recipe, get_recipe
from ..summary import format_summary, summary_dict
from .options import MODEL, add_json, add_model_args, entry_of


def models_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("models", help="list the models with parameters, receptive field and target")
    add_json(s)
    return s


def cmd_models(args) -> None:
    rows = []
    for name, entry in REGISTRY.items():
        info = summary_dict(name, create_model(name))
        rows.append(
            {"name": name, "params": info["params"], "rf": info["rf"], "role": entry.role, "target": entry.target}
        )
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        role = f"[{r['role']}] " if r["role"] else ""
        print(f"{r['name']:<{width}}  {r['params']:>7,} params  RF {r['rf']:>2}  {role}{r['target']}")


def summary_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("summary", help="per-layer table: output shape, parameters, receptive field, jump")
    s.add_argument("model", help=MODEL)
    add_model_args(s)
    add_json(s)
    return s


def cmd_summary(args) -> None:
    entry = entry_of(args.model, args.model_arg, check=False)  # built once, below: a big network costs its memory once
    info = summary_dict(entry.name, entry.build())
    print(json.dumps(info, indent=1) if args.json else format_summary(info))


def recipe_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("recipe", help="a model's (or a named) recipe, resolved; * marks what differs from the defaults")
    s.add_argument("name", help=f"a model, a role or a named recipe ({', '.join(RECIPES)})")
    add_json(s)
    return s


def cmd_recipe(args) -> None:
    """A named recipe, or a model's (by name or role), resolved, with the fields that differ from the defaults."""
    if args.name in RECIPES:
        recipe, title = get_recipe(args.name), f"recipe {args.name}"
    else:
        entry = get_entry(args.name)
        recipe, title = entry.recipe, f"{entry.name}: recipe {entry.recipe_name}"
    print(json.dumps(recipe.to_dict(), indent=1) if args.json else format_recipe(recipe, title))
