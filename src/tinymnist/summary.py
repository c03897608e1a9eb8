"""What a network is made of, layer by layer: output shape, parameters, multiply-adds, receptive field and
jump, for any network that takes (B, 1, 28, 28).

The layers are the blocks of an `nn.Sequential` (the registered networks), else the network's leaf modules
in the order they run. Shapes and multiply-adds come from forward hooks. The receptive field and the jump
are measured, not derived from the layer types: on a linearised copy of the network (positive weights,
ReLU-like activations and max-pools replaced by what passes every input through), the input pixels on which
one output unit depends span its receptive field, and two neighbouring units' fields are one jump apart.
`analytic_rf` derives the same figures from kernel sizes and strides for `nn.Sequential` networks; the
tests check that the two agree on every registered model.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .model import count_params

PAD = 48  # input margin for measuring: far enough that a unit in the middle sees no border


@dataclass
class Layer:
    name: str
    type: str
    output_shape: list[int]  # (C, H, W) or (classes,)
    params: int
    rf: int  # receptive field at this layer's output, in input pixels
    jump: int  # distance in input pixels between adjacent output positions (effective stride)
    macs: int  # multiply-accumulates of the forward pass for one image
    param_parts: list[int]  # parameters of each module that has any (e.g. conv, then BN)


def _pair(v) -> int:
    return v[0] if isinstance(v, tuple) else v


def _describe(module: nn.Module) -> str:
    parts = []
    for m in module.modules() if list(module.children()) else [module]:
        if isinstance(m, nn.Conv2d):
            k = _pair(m.kernel_size)
            bias = "" if m.bias is not None else ", no bias"
            pad = f", pad {_pair(m.padding)}" if _pair(m.padding) else ""
            kind = "depthwise conv" if m.groups > 1 and m.groups == m.in_channels else "conv"
            parts.append(f"{kind} {k}x{k} {m.in_channels}->{m.out_channels}{pad}{bias}")
        elif isinstance(m, nn.ReLU):
            parts.append("ReLU")
        elif isinstance(m, nn.BatchNorm2d):
            parts.append("BN")
        elif isinstance(m, (nn.Dropout, nn.Dropout2d)):
            parts.append(f"{type(m).__name__.lower()} {m.p:g}")
        elif isinstance(m, nn.MaxPool2d):
            parts.append(f"max-pool {_pair(m.kernel_size)}")
        elif isinstance(m, nn.AvgPool2d):
            parts.append(f"avg-pool {_pair(m.kernel_size)}")
        elif isinstance(m, nn.Linear):
            parts.append(f"linear {m.in_features}->{m.out_features}")
        elif type(m).__name__ == "LogSoftmaxHead":
            parts.append("flatten, log-softmax")
        elif not list(m.children()):
            parts.append(type(m).__name__)
    return ", ".join(parts)


def _units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers to tabulate: an nn.Sequential's blocks, else every leaf module (in registration order; the
    table keeps those that ran, in the order they ran)."""
    if isinstance(model, nn.Sequential):
        return list(model.named_children())
    inner = model.net if type(model).__name__ == "ScoresAsLogProbs" else model
    return [(name, m) for name, m in inner.named_modules() if name and not list(m.children())]


def _macs(module: nn.Module, out_elems: dict[nn.Module, int]) -> int:
    """Multiply-adds of the convolutions and linear layers in `module`, from each one's output size."""
    total = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m in out_elems:
            total += out_elems[m] * (m.in_channels // m.groups) * _pair(m.kernel_size) ** 2
        elif isinstance(m, nn.Linear) and m in out_elems:
            total += out_elems[m] // m.out_features * m.in_features * m.out_features
    return total


def _run(model: nn.Module, x: torch.Tensor, units) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """The output of each unit that runs, in the order they run."""
    seen: list[tuple[str, nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: seen.append((name, mod, out)))
             for name, m in units]  # append returns None: the output stays as it was
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


class _PassThrough(nn.Module):
    def forward(self, x):
        return x


def _linearised(model: nn.Module) -> nn.Module:
    """A copy in which every input pixel that can reach an output does, with a non-zero gradient: positive
    weights, BatchNorm as a positive scale, activations as the identity, max-pools as average pools."""
    probe = copy.deepcopy(model).float().eval()
    for parent in probe.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode))
            elif isinstance(child, nn.ReLU | nn.SiLU | nn.GELU | nn.LeakyReLU | nn.ReLU6 | nn.ELU | nn.Tanh
                            | nn.Sigmoid | nn.Hardswish | nn.Mish | nn.Dropout | nn.Dropout2d):
                setattr(parent, name, _PassThrough())
    with torch.no_grad():
        for m in probe.modules():
            for p in m.parameters(recurse=False):
                p.copy_(p.abs() + 0.1)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    return probe


def _extent(grad: torch.Tensor) -> tuple[int, int, bool]:
    """(first row, size, touches the border) of the non-zero region of a (S, S) gradient."""
    rows = torch.nonzero(grad.abs().sum(1) > 0).flatten()
    cols = torch.nonzero(grad.abs().sum(0) > 0).flatten()
    if len(rows) == 0:
        return 0, 0, False
    size = max(int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1)
    side = grad.shape[0]
    return int(cols[0]), size, bool(rows[0] == 0 or cols[0] == 0 or rows[-1] == side - 1 or cols[-1] == side - 1)


def measured_rf(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{layer: (receptive field, jump)} for each layer with a spatial (C, H, W) output, measured on a
    linearised copy (see the module's docstring). Measured on a padded input where the network accepts one
    (a field then never reaches the border), else on 28x28 (a field is then at most the image)."""
    probe = _linearised(model)
    units = _units(probe)
    for side in (28 + 2 * PAD, 28):
        x = torch.ones(1, 1, side, side, requires_grad=True)
        try:
            outputs = _run(probe, x, units)
            break
        except RuntimeError:  # a flatten into a fixed-size linear layer: measure on 28x28
            continue
    found: dict[str, tuple[int, int]] = {}
    for name, _, out in outputs:
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or name in found:
            continue
        h, w = out.shape[2] // 2, out.shape[3] // 2
        left, rf, _ = _extent(torch.autograd.grad(out[0, :, h, w].sum(), x, retain_graph=True)[0][0, 0])
        jump = 0
        if out.shape[3] > 1:
            w2 = w + 1 if w + 1 < out.shape[3] else w - 1
            left2, _, _ = _extent(torch.autograd.grad(out[0, :, h, w2].sum(), x, retain_graph=True)[0][0, 0])
            jump = abs(left2 - left)
        found[name] = (rf, jump)
    return found


def analytic_rf(model: nn.Sequential) -> dict[str, tuple[int, int]]:
    """{block: (receptive field, jump)} of an nn.Sequential from its layers' kernel sizes, strides and
    dilations: r += (k - 1) * d * j, j *= s, from r = j = 1."""
    rf, jump, found = 1, 1, {}
    for name, block in model.named_children():
        for m in block.modules():
            if isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
                k, s = _pair(m.kernel_size), _pair(m.stride)
                rf += _pair(getattr(m, "dilation", 1)) * (k - 1) * jump
                jump *= s
        found[name] = (rf, jump)
    return found


def layer_table(model: nn.Module, input_shape=(1, 28, 28)) -> list[Layer]:
    """Runs one dummy image through `model` in eval mode and tabulates each layer that ran."""
    was_training = model.training
    model.eval()
    out_elems: dict[nn.Module, int] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out: out_elems.setdefault(mod, out.numel()) and None)
             for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            outputs = _run(model, torch.zeros(1, *input_shape, device=device), _units(model))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    fields = measured_rf(model)
    rows, rf, jump, done = [], 1, 1, set()
    for name, module, out in outputs:
        if name in done or not isinstance(out, torch.Tensor):
            continue  # a module that runs twice is tabulated once
        done.add(name)
        rf, jump = fields.get(name, (rf, jump))  # a flat output keeps the field of what it came from
        parts = [n for m in module.modules() if (n := sum(p.numel() for p in m.parameters(recurse=False)))]
        rows.append(Layer(name, _describe(module), list(out.shape[1:]), count_params(module), rf, jump,
                          _macs(module, out_elems), parts))
    return rows


def summary_dict(name: str, model: nn.Module) -> dict:
    rows = layer_table(model)
    return {
        "model": name,
        "params": count_params(model),
        "rf": rows[-1].rf,
        "macs": sum(r.macs for r in rows),
        "layers": [asdict(r) for r in rows],
    }


def format_summary(info: dict) -> str:
    """The summary as a Markdown table, readable in a terminal and pasteable into a README."""
    lines = [
        f"{info['model']}: {info['params']:,} parameters, receptive field {info['rf']}, "
        f"{info['macs']:,} multiply-adds per image (forward)",
        "",
        "| layer | type | output (C,H,W) | params | RF | jump | mult-adds |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in info["layers"]:
        shape = ",".join(str(d) for d in r["output_shape"])
        params = " + ".join(f"{n:,}" for n in r["param_parts"]) or "0"
        lines.append(f"| {r['name']} | {r['type']} | {shape} | {params} | {r['rf']} | {r['jump']} | {r['macs']:,} |")
    lines.append(f"| **total** | | | **{info['params']:,}** | **{info['rf']}** | | **{info['macs']:,}** |")
    return "\n".join(lines)
