"""The original's three model classes in PyTorch, built as its networks/densenet.py and networks/resnet_ml.py
define them (spec 6.1, 6.2, 6.4): torchvision's networks with the 4-channel stem, the same module names and
aliases (`conv1`, `encoder2` ... share the backbone's modules), the hard-coded RGBY normalisation inside the
classifier's forward, the large variant's extra pool, and the metric head whose dropouts are no-ops. Tests
save them as the original saved its checkpoints and compare the imported Keras models with them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

RGBY_MEAN = (0.074598, 0.050630, 0.050891, 0.076287)  # spec 4, hard-coded in the classifier's forward
RGBY_STD = (0.122813, 0.085745, 0.129882, 0.119411)


def four_channel_stem(conv: nn.Conv2d) -> nn.Conv2d:
    """Spec 6.1: a 4-input 7x7/2 convolution whose Y kernel is a copy of the red-input slice."""
    stem = nn.Conv2d(4, 64, kernel_size=7, stride=2, padding=3, bias=False)
    stem.weight = nn.Parameter(torch.cat([conv.weight, conv.weight[:, :1]], dim=1))
    return stem


def concat_pool(features: torch.Tensor) -> torch.Tensor:
    """[average, max] over the map, flattened (avg first)."""
    pooled = torch.cat([nn.AdaptiveAvgPool2d(1)(features), nn.AdaptiveMaxPool2d(1)(features)], dim=1)
    return pooled.view(pooled.size(0), -1)


class DensenetClass(nn.Module):
    """class_densenet121_dropout / class_densenet121_large_dropout."""

    def __init__(self, num_classes: int = 28, large: bool = False):
        super().__init__()
        self.large = large
        self.backbone = torchvision.models.densenet121()
        features = self.backbone.features
        features.conv0 = four_channel_stem(features.conv0)
        self.conv1 = nn.Sequential(features.conv0, features.norm0, features.relu0, features.pool0)
        self.encoder2 = nn.Sequential(features.denseblock1)
        self.encoder3 = nn.Sequential(features.transition1, features.denseblock2)
        self.encoder4 = nn.Sequential(features.transition2, features.denseblock3)
        self.encoder5 = nn.Sequential(features.transition3, features.denseblock4, features.norm5)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.maxpool = nn.MaxPool2d(2, stride=2)
        self.logit = nn.Linear(1024, num_classes)
        self.bn1 = nn.BatchNorm1d(2048)
        self.fc1 = nn.Linear(2048, 1024)
        self.bn2 = nn.BatchNorm1d(1024)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        for channel in range(4):
            x[:, channel] = (x[:, channel] - RGBY_MEAN[channel]) / RGBY_STD[channel]
        x = self.conv1(x)
        if self.large:
            x = self.maxpool(x)
        x = F.relu(self.encoder5(self.encoder4(self.encoder3(self.encoder2(x)))))
        x = self.bn1(concat_pool(x))
        x = F.dropout(x, p=0.5, training=self.training)
        x = self.bn2(self.relu(self.fc1(x)))
        x = F.dropout(x, p=0.5, training=self.training)
        return self.logit(x)


class ArcMarginProduct(nn.Module):
    """Cosines between the normalised features and the normalised class weights."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-in_features ** -0.5,
                                                                                   in_features ** -0.5))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(features), F.normalize(self.weight))


class ResnetClass(nn.Module):
    """class_resnet50_dropout: forward gives (cosine, feature), as with set_configs(extract_feature=True)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.resnet = torchvision.models.resnet50()
        resnet = self.resnet
        resnet.conv1 = four_channel_stem(resnet.conv1)
        self.encoder1 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.encoder2, self.encoder3 = self.resnet.layer1, self.resnet.layer2
        self.encoder4, self.encoder5 = self.resnet.layer3, self.resnet.layer4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.logit = nn.Linear(2048, num_classes)  # unused by forward, present in the checkpoints
        self.arc_margin_product = ArcMarginProduct(512, num_classes)
        self.bn1 = nn.BatchNorm1d(4096)
        self.fc1 = nn.Linear(4096, 2048)
        self.bn2 = nn.BatchNorm1d(2048)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(2048, 512)
        self.bn3 = nn.BatchNorm1d(512)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.encoder5(self.encoder4(self.encoder3(self.encoder2(self.encoder1(x)))))
        x = self.bn1(concat_pool(x))
        x = F.dropout(x, p=0.25, training=False)  # torch 0.4.1's default: a no-op (spec 6.4)
        x = self.bn2(self.relu(self.fc1(x)))
        x = F.dropout(x, p=0.5, training=False)
        feature = self.bn3(self.fc2(x))
        return self.arc_margin_product(feature), feature


def with_running_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """`model` in eval mode with non-trivial BatchNorm statistics and affine parameters (random init leaves
    mean 0 and variance 1, which would hide a mixed-up moving mean or an epsilon)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                shape = module.running_mean.shape
                module.running_mean.copy_(0.2 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.05 + torch.rand(shape, generator=generator))
                module.weight.copy_(0.5 + torch.rand(shape, generator=generator))
                module.bias.copy_(0.2 * torch.randn(shape, generator=generator))
    return model.eval()


def save_like_the_original(model: nn.Module, path, legacy: bool, data_parallel: bool = False) -> None:
    """torch.save of the original's checkpoint dict (state_dict, epoch, best_epoch, best_score), in torch's
    legacy format (0.4's) or its zip format, optionally through DataParallel (`module.` keys)."""
    state = (nn.DataParallel(model) if data_parallel else model).state_dict()
    checkpoint = {"state_dict": state, "epoch": 45, "best_epoch": 38, "best_score": 0.612}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
