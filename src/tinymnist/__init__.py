"""tinymnist: design and train very small convolutional networks on MNIST, step by step, under hard budgets.

The Python API is what the `tinymnist` command uses, imported on first use (so `python -m tinymnist` can
handle Ctrl-C before torch loads):

    import tinymnist as tm
    data = tm.load_mnist().limit(2000)                              # uint8 tensors in memory
    recipe = tm.get_recipe("ghost-clean-end").with_overrides(epochs=2)
    tm.set_seed(1)
    result = tm.fit(tm.check_network(MyNet()), data, recipe, tm.default_runtime("cpu"))
    result.history[-1]["test_acc"], tm.evaluate(result.model, data.test_images, data.test_labels).acc
"""

import importlib

__version__ = "0.1.0"

# name -> the module that defines it
_API = {
    "load_mnist": "data", "MNIST": "data", "preprocess": "data",
    "Recipe": "recipes", "Augment": "recipes", "RECIPES": "recipes", "get_recipe": "recipes",
    "load_recipe_file": "recipes",
    "resolve": "model", "create_model": "model", "check_network": "usernet", "count_params": "nets",
    "log_probs": "model", "REGISTRY": "model",
    "Runtime": "runtime", "default_runtime": "runtime",
    "fit": "engine", "evaluate": "engine", "set_seed": "engine", "pick_device": "engine",
    "save_checkpoint": "records", "load_checkpoint": "records",
    "Budget": "judge", "train_seed": "run",
    "summary_dict": "summary", "format_summary": "summary",
    "TinyMnistError": "errors",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'tinymnist' has no attribute {name!r}")
