"""What a network is made of, layer by layer: output shape, parameters, multiply-adds, receptive field and
jump, for any network that takes (B, 1, 28, 28).

The layers are the blocks of an `nn.Sequential` (the registered networks), else the network's leaf modules
in the order they run. Shapes and multiply-adds come from forward hooks.

A layer's receptive field (RF) is that of its middle output unit (row H // 2, column W // 2) at the network's
real input, 28x28: the span of input pixels, first to last, that the unit depends on (rows or columns,
whichever is longer). Where the field on paper would pass the image's edge it stops there, as padding pixels
are not input pixels: a global pool sees at most the 28x28 image, and Model_1's 6x6 pool after a padded
convolution is 28 here, 32 on paper. The jump is how far the next unit's field along a row lies from the
middle unit's (its first or last pixel, whichever moved further): the stride from one unit to the next in
input pixels, 0 where a map is one unit wide (after a global pool nothing is next to anything). A flat
(B, N) output's field is that of all its units together, and the network's field (the summary's header and
total) that of its class scores.

Fields are measured, not derived from the layer types: on a linearised copy of the network (positive
weights, ReLU-like activations and max-pools replaced by what passes every input through), the input pixels
with a non-zero gradient are those a unit depends on. `analytic_rf` derives the same figures for
`nn.Sequential` networks of convolutions and pools from their kernel sizes, strides, padding and dilation;
the tests check that the two agree on every registered model and on networks made for the edge cases.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .model import count_params

SIDE = 28  # the input's height and width: the fields are those at this size


@dataclass
class Layer:
    name: str
    type: str
    output_shape: list[int]  # (C, H, W) or (classes,)
    params: int
    rf: int  # receptive field of the middle output unit at a 28x28 input, in input pixels
    jump: int  # input pixels from the middle unit's field to its neighbour's (effective stride; 0: one unit wide)
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
        elif isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
            kind = "max" if isinstance(m, nn.AdaptiveMaxPool2d) else "avg"
            parts.append(f"global {kind}-pool" if m.output_size in (1, (1, 1)) else f"adaptive {kind}-pool")
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


def _run(model: nn.Module, x: torch.Tensor, units) -> tuple[list[tuple[str, nn.Module, torch.Tensor]], object]:
    """The output of each unit that runs, in the order they run, and the network's output."""
    seen: list[tuple[str, nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: seen.append((name, mod, out)))
             for name, m in units]  # append returns None: the output stays as it was
    try:
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen, out


class _PassThrough(nn.Module):
    def forward(self, x):
        return x


ACTIVATIONS = (nn.ReLU, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Hardswish, nn.Mish,
               nn.Dropout, nn.Dropout2d)


def _linearised(model: nn.Module) -> nn.Module:
    """A copy in which every input pixel that can reach an output does, with a non-zero gradient: positive
    weights, BatchNorm as a positive scale, activations as the identity, max-pools as average pools.

    The weights are drawn (seeded), not all alike, so that class scores differ and a log-softmax over them
    cannot cancel their gradients; a kernel's weights sum to the square root of its taps (3 for 3x3), so
    neither the activations nor the gradient at a field's edge leave float32's range in a deep network."""
    probe = copy.deepcopy(model).float().eval()
    for parent in probe.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d) and not child.return_indices:
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode))
            elif isinstance(child, nn.AdaptiveMaxPool2d) and not child.return_indices:
                setattr(parent, name, nn.AdaptiveAvgPool2d(child.output_size))
            elif isinstance(child, ACTIVATIONS):
                setattr(parent, name, _PassThrough())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in probe.modules():
            for p in m.parameters(recurse=False):
                taps = p[0, 0].numel() if p.dim() > 2 else 1
                scale = taps**0.5 / p[0].numel() if p.dim() > 1 else 1.0
                p.copy_((torch.rand(p.shape, generator=generator) + 0.5) * scale)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    return probe


Span = tuple[int, int, int, int] | None  # first row, last row, first column, last column of a field; None: empty


def _span(grad: torch.Tensor) -> Span:
    """The rows and columns of the non-zero (or NaN) region of a (H, W) gradient."""
    rows = torch.nonzero((grad != 0).any(1)).flatten()
    cols = torch.nonzero((grad != 0).any(0)).flatten()
    if len(rows) == 0:
        return None
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def _size(span: Span) -> int:
    return 0 if span is None else max(span[1] - span[0], span[3] - span[2]) + 1


def _jump(span: Span, neighbour: Span) -> int:
    """How far the next unit's field lies along a row: its first or last column, whichever moved further."""
    if span is None or neighbour is None:
        return 0
    return max(abs(neighbour[2] - span[2]), abs(neighbour[3] - span[3]))


def _mixed(out: torch.Tensor) -> torch.Tensor:
    """One number that depends on every unit of a flat output: a sum with distinct positive weights, which a
    log-softmax's shift cannot cancel."""
    v = out.flatten()
    return (v * (torch.rand(len(v), generator=torch.Generator().manual_seed(1)) + 0.5).to(v)).sum()


@dataclass
class Fields:
    spatial: dict[str, tuple[int, int]]  # layer with a (C, H, W) output -> (field, jump) of its middle unit
    flat: dict[str, tuple[int, int]]  # layer with a flat output -> (field of all its units, 0)
    network: int  # the field of the network's class scores


def measure_fields(model: nn.Module, input_shape=(1, SIDE, SIDE)) -> Fields:
    """The receptive fields of `model`'s layers at `input_shape`, measured on a linearised copy (see the
    module's docstring)."""
    probe = _linearised(model)
    x = torch.ones(1, *input_shape, requires_grad=True)
    outputs, final = _run(probe, x, _units(probe))

    def field(value: torch.Tensor) -> Span:
        if not value.requires_grad:
            return None
        return _span(torch.autograd.grad(value, x, retain_graph=True)[0][0].sum(0))

    spatial, flat = {}, {}
    for name, _, out in outputs:
        if not isinstance(out, torch.Tensor) or name in spatial or name in flat or not out.is_floating_point():
            continue
        if out.dim() == 4:
            h, w = out.shape[2] // 2, out.shape[3] // 2
            middle = field(out[0, :, h, w].sum())
            beside = field(out[0, :, h, w + 1 if w + 1 < out.shape[3] else w - 1].sum()) if out.shape[3] > 1 else None
            spatial[name] = (_size(middle), _jump(middle, beside))
        else:
            flat[name] = (_size(field(_mixed(out[0]))), 0)
    network = _size(field(_mixed(final[0]))) if isinstance(final, torch.Tensor) else 0
    return Fields(spatial, flat, network)


def measured_rf(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{layer: (receptive field, jump)} for each layer with a spatial (C, H, W) output, at a 28x28 input,
    measured (see the module's docstring)."""
    return measure_fields(model).spatial


PADDING_READS = {  # where a position outside a map of size n reads, by a convolution's padding_mode
    "zeros": lambda j, n: None,  # padding: nothing
    "reflect": lambda j, n: -j if j < 0 else 2 * (n - 1) - j,
    "replicate": lambda j, n: min(max(j, 0), n - 1),
    "circular": lambda j, n: j % n,
}


def _step(m: nn.Module, n: int, axis: int):
    """For a convolution or pool along one axis of an n-long map: (reads, output length, padding mode), where
    reads(i) are the positions output unit i reads (some outside the map); None for other layers."""
    if isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
        o = size[axis] or n  # None keeps the length
        return (lambda i: range(i * n // o, -(-(i + 1) * n // o))), o, "zeros"
    if not isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
        return None

    def at(v):
        return v[axis] if isinstance(v, tuple) else v

    k, s, d, p = at(m.kernel_size), at(m.stride), at(getattr(m, "dilation", 1)), m.padding
    if isinstance(p, str):  # "valid", or "same": as much as the kernel needs, the odd pixel on the far side
        p = 0 if p == "valid" else d * (k - 1) // 2
    p = at(p)
    reach = n + 2 * p - d * (k - 1) - 1
    out = reach // s + 1
    if getattr(m, "ceil_mode", False):
        out = -(-reach // s) + 1
        out -= (out - 1) * s >= n + p  # the last window must start inside the map or its left padding
    if m.padding == "same":
        out = n
    return (lambda i: range(i * s - p, i * s - p + d * (k - 1) + 1, d)), out, getattr(m, "padding_mode", "zeros")


def _trace(layers: list, units: set[int]) -> tuple[int, int] | None:
    """The first and last input position that `units` of the last layer's output read, through `layers`."""
    for reads, n, mode in reversed(layers):
        inside = (PADDING_READS[mode](j, n) if not 0 <= j < n else j for i in units for j in reads(i))
        units = {j for j in inside if j is not None}
    return (min(units), max(units)) if units else None


def analytic_rf(model: nn.Sequential, side: int = SIDE) -> dict[str, tuple[int, int]]:
    """{block: (receptive field, jump)} of an nn.Sequential of convolutions and pools (other layers keep the
    map as it is) at a side x side input, from kernel sizes, strides, padding and dilation: the positions the
    middle unit (and its neighbour) reads are followed back to the input, layer by layer, along each axis. A
    position outside a map is padding and reads no input (or, by a convolution's padding_mode, the pixel it
    copies); an adaptive or global pool is a window over the bins of its input map."""
    axes: list[list] = [[], []]  # for rows and columns: (reads, length of the map read, padding mode) per layer
    lengths = [side, side]
    found = {}
    for name, block in model.named_children():
        for m in block.modules():
            for axis in (0, 1):
                if (step := _step(m, lengths[axis], axis)) is not None:
                    reads, out, mode = step
                    axes[axis].append((reads, lengths[axis], mode))
                    lengths[axis] = out
        spans = [_trace(axes[axis], {lengths[axis] // 2}) for axis in (0, 1)]
        rf = max((hi - lo + 1 for lo, hi in filter(None, spans)), default=0)
        w, width = lengths[1] // 2, lengths[1]
        jump = 0
        if width > 1 and spans[1] is not None and (beside := _trace(axes[1], {w + 1 if w + 1 < width else w - 1})):
            jump = max(abs(beside[0] - spans[1][0]), abs(beside[1] - spans[1][1]))
        found[name] = (rf if all(spans) else 0, jump)
    return found


def layers_and_field(model: nn.Module, input_shape=(1, SIDE, SIDE)) -> tuple[list[Layer], int]:
    """Runs one dummy image through `model` in eval mode and tabulates each layer that ran; with the
    network's own receptive field (that of its class scores: a network that averages its last maps in its
    forward sees more than its last layer)."""
    was_training = model.training
    model.eval()
    out_elems: dict[nn.Module, int] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out: out_elems.setdefault(mod, out.numel()) and None)
             for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            outputs, _ = _run(model, torch.zeros(1, *input_shape, device=device), _units(model))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    fields = measure_fields(model, input_shape)
    rows, done = [], set()
    for name, module, out in outputs:
        if name in done or not isinstance(out, torch.Tensor):
            continue  # a module that runs twice is tabulated once
        done.add(name)
        rf, jump = fields.spatial.get(name) or fields.flat.get(name, (0, 0))
        parts = [n for m in module.modules() if (n := sum(p.numel() for p in m.parameters(recurse=False)))]
        rows.append(Layer(name, _describe(module), list(out.shape[1:]), count_params(module), rf, jump,
                          _macs(module, out_elems), parts))
    return rows, fields.network


def layer_table(model: nn.Module, input_shape=(1, SIDE, SIDE)) -> list[Layer]:
    """The layers that ran on one dummy image, in eval mode (see `layers_and_field`)."""
    return layers_and_field(model, input_shape)[0]


def summary_dict(name: str, model: nn.Module) -> dict:
    rows, rf = layers_and_field(model)
    return {
        "model": name,
        "params": count_params(model),
        "rf": rf,
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
    last = info["layers"][-1]["rf"] if info["layers"] else info["rf"]
    if last != info["rf"]:  # e.g. a forward that averages the last layer's maps itself, not in a module
        lines += ["", f"The network's class scores see {info['rf']} pixels, more than its last layer's units ({last}): "
                      "its forward pools that layer's output."]
    return "\n".join(lines)
