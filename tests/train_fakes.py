"""Small stand-ins for the training tests: a list-backed loader and a tiny registered model."""
import math
import os

import torch
import torch.nn as nn

from deepres.data import DataInfo
from deepres.models import list_models, register_model

TINY_MODEL = "_test_tinynet_train"


class TinyNet(nn.Module):
    """conv-BN-ReLU, global pool, dropout, linear: every kind of state a checkpoint must carry."""

    def __init__(self, num_classes=4, in_chans=1, drop_rate=0.0, width=8, **_):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x))).mean(dim=(2, 3))
        return self.fc(self.drop(x))


if TINY_MODEL not in list_models():
    @register_model(input_size=(1, 8, 8))
    def _test_tinynet_train(num_classes=4, in_chans=1, **kwargs):
        return TinyNet(num_classes, in_chans, **kwargs)


class ListLoader:
    """Batches of in-memory tensors; order and flips depend only on (seed, epoch), as the real loaders'."""

    def __init__(self, images, labels, batch_size, *, seed=0, train=True, device="cpu"):
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.seed, self.train, self.epoch = batch_size, seed, train, 0
        self.dataset_size = len(labels)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return math.ceil(self.dataset_size / self.batch_size)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)  # CPU draws, same on any device
        order = torch.randperm(self.dataset_size, generator=g) if self.train else torch.arange(self.dataset_size)
        order = order.to(self.images.device)
        for start in range(0, self.dataset_size, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.images[idx]
            if self.train:
                flip = (torch.rand(len(idx), generator=g) < 0.5).to(x.device)
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            yield x, self.labels[idx]


def tiny_data(n_train=64, n_eval=32, num_classes=4, size=8, seed=0):
    """Noisy images of one of four flip-invariant patterns (flat, horizontal/vertical stripes, checkerboard)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(size).view(size, 1).expand(size, size)
    cols = rows.t()
    patterns = torch.stack([torch.zeros(size, size), (rows % 2) * 2.0 - 1, (cols % 2) * 2.0 - 1,
                            ((rows + cols) % 2) * 2.0 - 1])[:num_classes]

    def make(n):
        labels = torch.arange(n) % num_classes
        images = patterns[labels].unsqueeze(1) + torch.randn(n, 1, size, size, generator=g) * 0.5
        return images, labels

    return make(n_train), make(n_eval)


def tiny_loaders(batch_size=16, seed=0, device="cpu", **kwargs):
    (xt, yt), (xe, ye) = tiny_data(**kwargs)
    info = DataInfo(num_classes=4, in_chans=1, classes=["a", "b", "c", "d"], train_size=len(yt),
                    eval_size=len(ye))
    return (ListLoader(xt, yt, batch_size, seed=seed, device=device),
            ListLoader(xe, ye, 32, train=False, device=device), info)


class EventAt:
    """Wraps a train loader: calls `event()` while yielding batch `at` of epoch `epoch` (raise a bad-image error,
    send this process a signal...), then goes on as the loader does."""

    def __init__(self, loader, at, event, epoch=0):
        self.loader, self.at, self.event, self.epoch = loader, at, event, epoch

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch):
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if self.loader.epoch == self.epoch and i == self.at:
                self.event()
            yield batch


def raise_(error: BaseException):
    """An event that raises `error`."""
    def event():
        raise error
    return event


def send_signal(signum: int):
    """An event that sends this process `signum`."""
    return lambda: os.kill(os.getpid(), signum)
