"""The few parameterised networks behind every registered model, the blocks they are built from, and counting a
network's trainable parameters.

Each network is an `nn.Sequential` of named blocks (so `summary.py` can walk it block by block and the state
dict keys read `conv1.0.weight`); its arguments are plain values, so a registry entry or a record can name
them. Shape comments are for a (B, 1, 28, 28) input; RF is the receptive field in input pixels.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU}


def conv_block(
    cin: int, cout: int, k: int, *, bn: bool, dropout: float, relu: bool = True, padding: int = 0,
    act: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """Conv (no bias: BN or the next layer makes it redundant) -> ReLU -> BN -> Dropout, as in the reference.

    `act` replaces the ReLU by another activation; `relu=False` leaves the activation out."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=padding, bias=False)]
    if relu:
        layers.append(act())
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def bn_block(cin: int, cout: int, k: int = 3, padding: int = 0, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return conv_block(cin, cout, k, bn=True, dropout=0.0, padding=padding, act=act)


def separable_block(cin: int, cout: int, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Depthwise-separable 3x3: one 3x3 filter per input channel, then a 1x1 mixing them -> ReLU -> BN.

    The receptive field of a 3x3 convolution for cin * (9 + cout) weights instead of cin * cout * 9.
    """
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, groups=cin, bias=False),
        nn.Conv2d(cin, cout, 1, bias=False),
        act(),
        nn.BatchNorm2d(cout),
    )


BLOCKS = {"full": bn_block, "separable": separable_block}


def classifier(cin: int) -> nn.Sequential:
    """The 1x1 convolution from pooled channels to the ten class scores."""
    return conv_block(cin, 10, 1, bn=False, dropout=0.0, relu=False)


class LogSoftmaxHead(nn.Module):
    """(B, 10, 1, 1) class scores -> (B, 10) log-probabilities, for `nll_loss`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(x.flatten(1), dim=1)


def _choice(table: dict, name: str, what: str):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(table)}")
    return table[name]


def replace_dropout(model: nn.Module, make) -> nn.Module:
    """Replaces every nn.Dropout in `model` by `make(p)` with the same p (no parameters change)."""
    for name, child in model.named_children():
        if type(child) is nn.Dropout:
            setattr(model, name, make(child.p))
        else:
            replace_dropout(child, make)
    return model



# --- the networks ---------------------------------------------------------------------------------------


def wide_net(dropout: float = 0.0) -> nn.Sequential:
    """Step 1's structure: two 3x3 convolutions to 32 channels at full resolution, a 1x1 squeeze and the
    max-pool at RF 5, four more 3x3 convolutions, a 6x6 global average pool. No BatchNorm."""

    def conv(cin, cout, k, padding=0):
        return conv_block(cin, cout, k, bn=False, dropout=dropout, padding=padding)

    return nn.Sequential(OrderedDict(
        conv1=conv(1, 16, 3),  # (B, 16, 26, 26)  RF 3
        conv2=conv(16, 32, 3),  # (B, 32, 24, 24)  RF 5
        trans1=conv_block(32, 10, 1, bn=False, dropout=0.0, relu=False),  # (B, 10, 24, 24)
        pool1=nn.MaxPool2d(2),  # (B, 10, 12, 12)  RF 6
        conv3=conv(10, 16, 3),  # (B, 16, 10, 10)  RF 10
        conv4=conv(16, 16, 3),  # (B, 16, 8, 8)    RF 14
        conv5=conv(16, 16, 3),  # (B, 16, 6, 6)    RF 18
        conv6=conv(16, 16, 3, padding=1),  # (B, 16, 6, 6)    RF 22
        gap=nn.AvgPool2d(6),  # (B, 16, 1, 1)    RF 32
        fc1=classifier(16),  # (B, 10, 1, 1)
        out=LogSoftmaxHead(),
    ))


def reference_net(bn: bool = True, dropout: float = 0.0) -> nn.Sequential:
    """The reference's final architecture (steps 2 to 6 differ only in `bn` and `dropout`): max-pool and a
    1x1 squeeze at RF 5, an 8x8 global average pool, then 1x1 layers 24 -> 32 -> 16 -> 10."""
    plain = dict(bn=False, dropout=0.0, relu=False)
    return nn.Sequential(OrderedDict(
        conv1=conv_block(1, 8, 3, bn=bn, dropout=dropout),  # (B, 8, 26, 26)   RF 3
        conv2=conv_block(8, 16, 3, bn=bn, dropout=dropout),  # (B, 16, 24, 24)  RF 5: edges and gradients
        pool1=nn.MaxPool2d(2),  # (B, 16, 12, 12)  RF 6
        trans1=conv_block(16, 8, 1, **plain),  # (B, 8, 12, 12)   squeeze channels before the next block
        conv3=conv_block(8, 16, 3, bn=bn, dropout=dropout),  # (B, 16, 10, 10)  RF 10
        conv4=conv_block(16, 24, 3, bn=bn, dropout=dropout),  # (B, 24, 8, 8)    RF 14
        gap=nn.AvgPool2d(8),  # (B, 24, 1, 1)    RF 28: the whole digit
        fc1=conv_block(24, 32, 1, bn=bn, dropout=dropout),  # (B, 32, 1, 1)    1x1 expansion after GAP
        fc2=conv_block(32, 16, 1, bn=bn, dropout=dropout),  # (B, 16, 1, 1)
        fc3=conv_block(16, 10, 1, **plain),  # (B, 10, 1, 1)    class scores
        out=LogSoftmaxHead(),
    ))


def late_pool_net(channels: tuple[int, ...] = (8, 12, 16, 16, 16)) -> nn.Sequential:
    """Two 3x3 convolutions at full resolution (RF 5), a max-pool, then the other 3x3 convolutions down to a
    global average pool and the classifier; Conv -> ReLU -> BN throughout (steps 7 and 8)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    side, cin = 28, 1
    for i, cout in enumerate(channels, 1):
        layers[f"conv{i}"] = bn_block(cin, cout)  # (B, cout, side - 2, side - 2)
        side, cin = side - 2, cout
        if i == 2:
            layers["pool1"] = nn.MaxPool2d(2)  # RF 6
            side //= 2
    layers["gap"] = nn.AvgPool2d(side)  # RF 28
    layers["fc"] = classifier(cin)
    layers["out"] = LogSoftmaxHead()
    return nn.Sequential(layers)


def early_pool_net(
    channels: tuple[int, ...] = (8, 12, 16, 16, 16), block: str = "full", act: str = "relu"
) -> nn.Sequential:
    """Max-pool right after the first 3x3 convolution, then four more 3x3 convolutions at 13x13 and below,
    full or depthwise-separable (`block`), with ReLU or SiLU (`act`) (steps 9 and after)."""
    c1, c2, c3, c4, c5 = channels
    make, activation = _choice(BLOCKS, block, "block"), _choice(ACTIVATIONS, act, "activation")
    return nn.Sequential(OrderedDict(
        conv1=bn_block(1, c1, act=activation),  # (B, c1, 26, 26)  RF 3
        pool1=nn.MaxPool2d(2),  # (B, c1, 13, 13)  RF 4
        conv2=make(c1, c2, act=activation),  # (B, c2, 11, 11)  RF 8
        conv3=make(c2, c3, act=activation),  # (B, c3, 9, 9)    RF 12
        conv4=make(c3, c4, act=activation),  # (B, c4, 7, 7)    RF 16
        conv5=make(c4, c5, act=activation),  # (B, c5, 5, 5)    RF 20
        gap=nn.AvgPool2d(5),  # (B, c5, 1, 1)    RF 28
        fc=classifier(c5),  # (B, 10, 1, 1)
        out=LogSoftmaxHead(),
    ))


def pool_first_net(channels: tuple[int, ...] = (8, 12, 16, 16, 16)) -> nn.Sequential:
    """`early_pool_net` with the max-pool moved before the first ReLU and BatchNorm: conv -> max-pool -> ReLU
    -> BN. ReLU and max-pool commute, so only BatchNorm changes: it normalises the pooled activations, 13x13
    instead of 26x26, and the ReLU and BatchNorm do a quarter of the work (steps 23 to 25)."""
    net = early_pool_net(channels)  # built whole first: its records were made with this order of initialisation
    del net.pool1
    net.conv1 = nn.Sequential(
        nn.Conv2d(1, channels[0], 3, bias=False), nn.MaxPool2d(2), nn.ReLU(), nn.BatchNorm2d(channels[0])
    )  # (B, c1, 13, 13)  RF 4
    return net


NETWORKS = {f.__name__: f for f in (wide_net, reference_net, late_pool_net, early_pool_net, pool_first_net)}


def count_params(model: nn.Module) -> int:
    """A network's trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
