"""A user's own model, as `model.arch=module:tinynet:build` finds it (tests/ is on the path):
a tiny CNN with a builder that takes keyword arguments, like a user's repository has."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 3, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build(
    num_classes: int = 3, width: int = 8, seed: int = 0, answer: int | None = None
) -> TinyNet:
    """A seeded TinyNet; `answer`: a head whose top-1 is always that class."""
    torch.manual_seed(seed)
    net = TinyNet(num_classes, width).eval()
    if answer is not None:
        with torch.no_grad():
            net.head.weight.zero_()
            net.head.bias.zero_()
            net.head.bias[answer] = 20.0
    return net


def not_a_model() -> str:
    return "a string"
