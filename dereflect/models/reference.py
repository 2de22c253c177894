"""A student with seeded random weights that behaves like a trained one: for tests and speed scripts.

Why: export, runtime and benchmark tests need a network whose outputs differ from its input (a fresh
student is exactly the identity: its residual head starts at zero), deterministic, without shipping or
training weights for every preset.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dereflect.models.registry import create_model


def reference_student(name: str = "student-nano", seed: int = 0):
    """A student with seeded random weights whose activations look like a trained one's:
    He-normal convs (unit gain through LeakyReLU), small biases, and a head scaled so the
    predicted residual is a few percent of the image (little clamping at 0/1)."""
    model = create_model(name)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1] // module.groups
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.05)
        head = model.decoder.head if hasattr(model, "decoder") else model.head
        head.weight.mul_(0.08)
        head.bias.mul_(0.2)
        colour = getattr(model, "colour", None)  # the MobileNetV2 students' global colour path: a few % of gain
        if colour is not None:
            colour.mlp[-1].weight.mul_(0.01)
            colour.mlp[-1].bias.zero_()
    return model.eval()
