"""The PyTorch side of benchmarks/gpu_step.py: the original's framework timing the same models and losses.

torchvision's DenseNet121 / ResNet50 with a 4-channel first conv (spec 6.1) and the heads of spec 6.2 (the
classifier: per-channel normalisation, concat avg+max pool, BN, Dropout .5, Linear, ReLU, BN, Dropout .5,
Linear to 28) and 6.4 (the embedder: concat pool, BN, Linear 2048, ReLU, BN, Linear 512, BN; then
ArcMarginProduct), trained by Adam on focal + symmetric Lovasz + hard log loss, or on ArcFace: a direct
torch port of hpa_tf.losses (spec 7). channels_last, bf16 autocast for bf16 rows, optional torch.compile.

    python benchmarks/torch_step.py ROWS_JSON [--steps N] [--warmup N] [--budget-s S] [--compile] [--cpu]

Prints a line per row on stderr and, last on stdout, one JSON object: {"rows": {key: result}, "note": ...}.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_step import Budget, Row, timed  # noqa: E402

MINI_DENSENET = re.compile(r"densenet_(\d+)_(\d+)_(\d+)_(\d+)$")


def backbone(name: str) -> tuple[nn.Module, int]:
    """(torchvision backbone with a 4-input first conv of the same shape, its output channels). DenseNet
    ends with the ReLU its forward applies after norm5 (spec 6.2); densenet_A_B_C_D: those block counts."""
    mini = MINI_DENSENET.match(name)
    if name == "densenet121" or mini:
        net = torchvision.models.DenseNet(block_config=tuple(int(b) for b in mini.groups())) if mini \
            else torchvision.models.densenet121()
        net.features.conv0 = nn.Conv2d(4, 64, 7, 2, 3, bias=False)
        return nn.Sequential(net.features, nn.ReLU(inplace=True)), net.classifier.in_features
    if name == "resnet50":
        net = torchvision.models.resnet50()
        net.conv1 = nn.Conv2d(4, 64, 7, 2, 3, bias=False)
        return nn.Sequential(*list(net.children())[:-2]), net.fc.in_features
    raise SystemExit(f"torch_step: no PyTorch counterpart for backbone {name!r}")


class ConcatPool(nn.Module):
    """[avg pool, max pool] over the spatial axes, avg first: [N, C, H, W] -> [N, 2C]."""

    def forward(self, x):
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], dim=1)


class Normalise(nn.Module):
    """Per-channel (x - mean) / std inside the model, as the reference's forward (the constants do not
    change the timing)."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.register_buffer("mean", torch.full((1, channels, 1, 1), 0.07))
        self.register_buffer("std", torch.full((1, channels, 1, 1), 0.12))

    def forward(self, x):
        return (x - self.mean) / self.std


class ArcMarginProduct(nn.Module):
    """Cosines between L2-normalised features and L2-normalised class weights (spec 6.4)."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        limit = features ** -0.5
        self.weight = nn.Parameter(torch.empty(classes, features).uniform_(-limit, limit))

    def forward(self, x):
        return F.linear(F.normalize(x), F.normalize(self.weight))


def classifier(name: str, classes: int) -> nn.Module:
    features, width = backbone(name)
    return nn.Sequential(Normalise(), features, ConcatPool(), nn.BatchNorm1d(2 * width), nn.Dropout(0.5),
                         nn.Linear(2 * width, width), nn.ReLU(), nn.BatchNorm1d(width), nn.Dropout(0.5),
                         nn.Linear(width, classes))


def metric_network(name: str, classes: int, hidden: int = 2048, embedding: int = 512) -> nn.Module:
    features, width = backbone(name)
    return nn.Sequential(features, ConcatPool(), nn.BatchNorm1d(2 * width), nn.Linear(2 * width, hidden),
                         nn.ReLU(), nn.BatchNorm1d(hidden), nn.Linear(hidden, embedding),
                         nn.BatchNorm1d(embedding), ArcMarginProduct(embedding, classes))


def focal_loss(z, y, gamma=2.0):
    bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    return (bce * torch.exp(gamma * F.logsigmoid(-z * (2 * y - 1)))).sum(1).mean()


def lovasz_hinge(z, y):
    """Per class over the batch (spec 7.2), mean over classes."""
    errors = 1 - z.t() * (2 * y.t() - 1)
    errors_sorted, order = torch.sort(errors, dim=1, descending=True, stable=True)
    gt = torch.gather(y.t(), 1, order)
    total = gt.sum(1, keepdim=True)
    jaccard = 1 - (total - gt.cumsum(1)) / (total + (1 - gt).cumsum(1))
    grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    return (F.relu(errors_sorted) * grad).sum(1).mean()


def hard_log_loss(z, y):
    """BCE over the positives and the k hardest negatives of each class (spec 7.3), mean over classes."""
    positive = y.t() > 0
    n_pos, n_neg = positive.sum(1, keepdim=True), (~positive).sum(1, keepdim=True)
    k = torch.minimum(torch.minimum(n_neg, n_pos + torch.clamp(n_neg // 2, min=2)),
                      torch.floor(0.7 * n_neg.double()).long() + 2)
    z_sorted, order = torch.sort(z.t(), dim=1, descending=True, stable=True)
    negative = torch.gather(~positive, 1, order)
    keep = ~negative | (negative.cumsum(1) <= k)
    bce = F.binary_cross_entropy_with_logits(z_sorted, torch.gather(y.t(), 1, order), reduction="none")
    return ((bce * keep).sum(1) / keep.sum(1).clamp(min=1)).mean()


def classifier_loss(z, y):
    symmetric = 0.5 * (lovasz_hinge(z, y) + lovasz_hinge(-z, 1 - y))
    return 0.5 * focal_loss(z, y) + 0.5 * symmetric + 0.5 * hard_log_loss(z, y)


def arcface_loss(cosine, labels, s=30.0, m=0.5):
    sine = torch.sqrt(torch.clamp(1 - cosine ** 2, min=1e-12))
    phi = torch.where(cosine > math.cos(math.pi - m), cosine * math.cos(m) - sine * math.sin(m),
                      cosine - m * math.sin(m))
    target = F.one_hot(labels, cosine.shape[1]).to(cosine.dtype)
    margin = s * (target * phi + (1 - target) * cosine)
    return 0.5 * (F.cross_entropy(margin, labels) + F.cross_entropy(cosine, labels))


MODELS = {"classifier": (classifier, classifier_loss), "metric": (metric_network, arcface_loss)}


def measure(row: Row, args, device: torch.device) -> dict:
    """images/s of Adam steps on random images (channels_last), bf16 autocast for bf16 rows."""
    torch.manual_seed(0)
    build, loss_fn = MODELS[row.kind]
    model = build(row.backbone, row.classes).to(device, memory_format=torch.channels_last).train()
    images = torch.rand(row.batch, 4, row.size, row.size, device=device).contiguous(
        memory_format=torch.channels_last)
    if row.kind == "classifier":
        labels = (torch.rand(row.batch, row.classes, device=device) < 0.1).float()
    else:
        labels = torch.randint(0, row.classes, (row.batch,), device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4, eps=1e-8)
    net = torch.compile(model) if args.compile else model

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=row.precision == "bf16"):
            out = net(images)
        loss = loss_fn(out.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    def sync(_):
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    step()  # cuDNN autotuning, torch.compile's compilation
    sync(None)
    compile_s = time.perf_counter() - start
    return {"images_per_s": row.batch / timed(step, sync, args.warmup, args.steps), "compile_s": compile_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", help="JSON list of gpu_step.Row fields")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=120)
    parser.add_argument("--fp32-math", choices=["tf32", "ieee"], default="tf32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.fp32_math == "tf32"
    budget, results = Budget(args.budget_s), {}
    for row in (Row(**fields) for fields in json.loads(args.rows)):
        start = time.perf_counter()
        results[row.key] = budget.measure(row, lambda row: measure(row, args, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"torch_step: {row.key}: {results[row.key]} ({time.perf_counter() - start:.0f} s)",
              file=sys.stderr, flush=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    note = f"PyTorch {torch.__version__} on {name}, {'torch.compile' if args.compile else 'eager'}"
    print(json.dumps({"rows": results, "note": note}), flush=True)


if __name__ == "__main__":
    main()
