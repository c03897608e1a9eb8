"""A network of your own, outside the package: tinymnist trains, summarises, judges, exports and serves it
as it does its registered models.

    tinymnist summary examples/my_net.py:MyNet
    tinymnist train examples/my_net.py:MyNet --recipe final --seeds 1-2 --max-params 8000
    tinymnist train examples/my_net.py:MyNet --model-arg width=12 --set lr=0.05

It takes (B, 1, 28, 28) normalised digits and returns (B, 10) class scores (log-probabilities work too).
"""

import torch
from torch import nn


class MyNet(nn.Module):
    """Three 3x3 convolutions and a max-pool, then a global average pool and a 1x1 classifier."""

    def __init__(self, width: int = 8, dropout: float = 0.0):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(
            block(1, width),  # (B, w, 26, 26)   RF 3
            nn.MaxPool2d(2),  # (B, w, 13, 13)   RF 4
            block(width, 2 * width),  # (B, 2w, 11, 11)  RF 8
            block(2 * width, 2 * width),  # (B, 2w, 9, 9)    RF 12
            block(2 * width, 2 * width),  # (B, 2w, 7, 7)    RF 16
            nn.Dropout(dropout),
        )
        self.classifier = nn.Conv2d(2 * width, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.classifier(x).mean(dim=(2, 3))  # global average pool of the class maps: (B, 10) scores
        return x


def small_net(width: int = 6) -> nn.Module:
    """A function that returns a module works as well as a class."""
    return MyNet(width=width)
