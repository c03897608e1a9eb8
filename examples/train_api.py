"""The network of my_net.py trained through the Python API instead of the command line: the same functions
the `tinymnist` command uses.

    python examples/train_api.py --limit 2000 --epochs 2
"""

import argparse
from pathlib import Path

from my_net import MyNet

import tinymnist as tm


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--limit", type=int, help="train and test on the first N images only")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--out", default="runs-api", help="folder for the checkpoint")
    args = p.parse_args()

    data = tm.load_mnist().limit(args.limit)  # $TINYMNIST_DATA or ./data/mnist, downloaded if missing
    recipe = tm.get_recipe("ghost-clean-end").with_overrides(epochs=args.epochs)  # the final model's recipe
    tm.set_seed(1)
    net = tm.check_network(MyNet(width=8), "MyNet")  # (B, 1, 28, 28) -> (B, 10), scores made log-probabilities
    result = tm.fit(net, data, recipe, tm.default_runtime("cpu"))
    for row in result.history:
        print(f"epoch {row['epoch']}: train {row['train_acc']:.2f} %, test {row['test_acc']:.2f} %")
    tm.save_checkpoint(Path(args.out) / "my_net.pt", "my_net", result.model, recipe)
    stats = tm.evaluate(result.model, data.test_images, data.test_labels)
    print(f"{tm.count_params(net):,} parameters, test accuracy {stats.acc:.2f} % ({stats.correct}/{stats.total})")


if __name__ == "__main__":
    main()
