"""The evaluation networks of the dataset-distillation literature: ConvNet-D, ResNetAP-10, ResNet-18.

ConvNet-D and ResNetAP-10 follow DC/IDC/MinimaxDiffusion (instance norm written as an affine
``GroupNorm(C, C)``); ResNet-18 is torchvision's layout (BatchNorm), written here because
torchvision cannot be installed beside this torch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..memory import check_memory

NET_NAMES = ("convnet3", "convnet6", "resnetap10", "resnet18")
STAGE_WIDTHS = (64, 128, 256, 512)


def instance_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(channels, channels, affine=True)


class ConvNet(nn.Module):
    """D blocks of conv3x3(width)-instancenorm-ReLU-avgpool2, then one linear layer."""

    def __init__(self, num_classes: int, depth: int, resolution: int, width: int = 128):
        super().__init__()
        side = resolution >> depth  # each 2x2 average pool floors odd sizes
        if side < 1:
            raise UserError(f"convnet{depth} needs images of at least {2**depth} px, got {resolution}")
        blocks: list[nn.Module] = []
        for d in range(depth):
            blocks += [
                nn.Conv2d(3 if d == 0 else width, width, 3, padding=1),
                instance_norm(width),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2),
            ]
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(width * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: strided conv3x3 downsampling, BatchNorm."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.norm1 = conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.norm2 = conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class APBlock(nn.Module):
    """IDC's basic block: 2x2 average pooling after conv1 replaces the strided conv; instance norm."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.norm1 = conv3x3(cin, cout), instance_norm(cout)
        self.pool: nn.Module = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv2, self.norm2 = conv3x3(cout, cout), instance_norm(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(stride), instance_norm(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(F.relu(self.norm1(self.conv1(x))))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """stem -> four stages of 64, 128, 256, 512 channels (2-4 halve the size) -> global pool -> linear."""

    def __init__(
        self,
        stem: nn.Module,
        block: Callable[[int, int, int], nn.Module],
        blocks_per_stage: tuple[int, int, int, int],
        num_classes: int,
    ):
        super().__init__()
        self.stem = stem
        stages, cin = [], STAGE_WIDTHS[0]
        for i, (width, n) in enumerate(zip(STAGE_WIDTHS, blocks_per_stage, strict=True)):
            # the first block of a stage changes width and stride, the others keep them
            blocks = [block(cin, width, 1 if i == 0 else 2)] + [block(width, width, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(x.mean(dim=(2, 3)))


def ap_stem(resolution: int) -> nn.Sequential:
    """IDC's stem by resolution: 1/4 of the input side above 128 px, 1/2 above 64 px, full size below."""
    c = STAGE_WIDTHS[0]
    if resolution > 128:
        return nn.Sequential(
            nn.Conv2d(3, c, 7, padding=3, bias=False),
            instance_norm(c),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(4),
        )
    layers: list[nn.Module] = [conv3x3(3, c), instance_norm(c), nn.ReLU(inplace=True)]
    if resolution > 64:
        layers.append(nn.AvgPool2d(2))
    return nn.Sequential(*layers)


def torchvision_stem() -> nn.Sequential:
    c = STAGE_WIDTHS[0]
    return nn.Sequential(
        nn.Conv2d(3, c, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    )


def build_net(name: str, num_classes: int, resolution: int) -> nn.Module:
    """One of ``NET_NAMES`` for ``resolution`` x ``resolution`` RGB inputs."""
    if resolution >= 1:
        # one image's first-block activations (128 channels at full size, forward and backward) and a
        # ConvNet's classifier (its weights grow with the resolution squared), with the optimizer's copies
        classifier = 128 * (resolution >> 3) ** 2 * num_classes if name in ("convnet3", "convnet6") else 0
        check_memory(
            2 * 4 * 128 * resolution**2 + 4 * 4 * classifier,
            f"{name} at {resolution} px (one image's activations and the weights)",
            "lower --resolution (the protocol uses 224)",
        )
    if name in ("convnet3", "convnet6"):
        return ConvNet(num_classes, depth=int(name[-1]), resolution=resolution)
    if name == "resnetap10":
        # four stages of 2x downsampling after the stem: at least 8 px so the last map is not empty
        if resolution < 8:
            raise UserError(f"resnetap10 needs images of at least 8 px, got {resolution}")
        return ResNet(ap_stem(resolution), APBlock, (1, 1, 1, 1), num_classes)
    if name == "resnet18":
        return ResNet(torchvision_stem(), BasicBlock, (2, 2, 2, 2), num_classes)
    raise UserError(f"unknown network '{name}': choose one of {', '.join(NET_NAMES)}")


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
