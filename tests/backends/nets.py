"""Small PyTorch networks for the tests (imported only where torch is installed)."""

from __future__ import annotations

import torch


class ConvNet(torch.nn.Module):
    """Conv → ReLU → conv → global mean → linear: ``image [N,3,H,W]`` → ``[N,4]``."""

    def __init__(self, channels: int = 8, classes: int = 4):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.c2 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.fc = torch.nn.Linear(channels, classes)

    def forward(self, image):
        y = torch.relu(self.c1(image))
        y = torch.relu(self.c2(y))
        return self.fc(y.mean(dim=(2, 3)))


class DictNet(torch.nn.Module):
    """The conv net's logits and softmax probabilities as a dict."""

    def __init__(self, net: ConvNet):
        super().__init__()
        self.net = net

    def forward(self, image):
        logits = self.net(image)
        return {"logits": logits, "probabilities": torch.softmax(logits, dim=-1)}


class Linear(torch.nn.Module):
    """``features [N,3]`` → ``[N,1]``."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 1)

    def forward(self, features):
        return self.fc(features)
