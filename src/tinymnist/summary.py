"""Layer tables: per block of a model, its output shape, parameters, receptive field, jump and FLOPs.

The receptive field follows r_out = r_in + (k - 1) * j_in and j_out = j_in * s, starting from r = j = 1.
It is computed here from the modules themselves (torchinfo has no receptive field, and torchscan reports
per leaf module, while the exercise reasons per block: conv + ReLU + BN + dropout).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .model import count_params


@dataclass
class Layer:
    name: str
    type: str
    output_shape: list[int]  # (C, H, W) or (classes,)
    params: int
    rf: int  # receptive field at this block's output, in input pixels
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
        elif type(m).__name__ == "LogSoftmaxHead":
            parts.append("flatten, log-softmax")
        elif not list(m.children()):
            parts.append(type(m).__name__)
    return ", ".join(parts)


def _walk_rf(module: nn.Module, rf: int, jump: int) -> tuple[int, int]:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s = _pair(m.kernel_size), _pair(m.stride)
            d = _pair(getattr(m, "dilation", 1))
            rf += (d * (k - 1)) * jump
            jump *= s
    return rf, jump


def _macs(module: nn.Module) -> int:
    total = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            total += m._tm_out_elems * (m.in_channels // m.groups) * _pair(m.kernel_size) ** 2
    return total


def _param_parts(module: nn.Module) -> list[int]:
    return [n for m in module.modules() if (n := sum(p.numel() for p in m.parameters(recurse=False)))]


def layer_table(model: nn.Module, input_shape=(1, 28, 28)) -> list[Layer]:
    """Runs one dummy image through `model` (an nn.Sequential of blocks) in eval mode and tabulates it."""
    was_training = model.training
    model.eval()
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: setattr(mod, "_tm_out_elems", out.numel()))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    rows, rf, jump = [], 1, 1
    try:
        x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
        with torch.no_grad():
            for name, block in model.named_children():
                x = block(x)
                rf, jump = _walk_rf(block, rf, jump)
                rows.append(
                    Layer(name, _describe(block), list(x.shape[1:]), count_params(block), rf, jump, _macs(block),
                          _param_parts(block))
                )
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
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
