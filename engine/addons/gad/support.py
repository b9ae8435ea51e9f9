"""GAD's support regression networks (Mazini Rodrigues, Boutry & Najman, Pattern Recognit. Lett.).

For a class pair (c₁, c₂) and an offset α, the targets are the original model's logits with the
*other* class's logit lowered by α: for an image of c₁, z'_{c₂} = z_{c₂} − α; for an image of
c₂, z'_{c₁} = z_{c₁} − α; every other logit unchanged. A support network starts from the original
architecture and weights and regresses these targets with MSE (paper: 10 epochs, Adam, lr 4e-5).
It is fine-tuned in eval mode: BatchNorm statistics and Dropout stay those of the original, so
only the weights move. α = 0 is the original model itself and is not trained.

A :class:`SupportSet` holds the trained weights for each α with the original model's fingerprint
and the class pair; it is refused for any other model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from engine.method import MethodError, ProgressFn
from engine.models.spec import model_fingerprint
from engine.runtime import checkpoint
from engine.storage import cache_dir, load_record, save_record

FORMAT = "explainer-gad-support/1"
DEFAULT_ALPHAS = (2.0, 4.0, 6.0, 8.0)  # logit offsets of the support networks, one each


class SupportSetError(MethodError):
    """A support set that is missing, unreadable, or made for another model or class pair."""


@torch.no_grad()
def offset_targets(
    logits: Tensor, labels: Tensor, classes: tuple[int, int], alpha: float
) -> Tensor:
    """The regression targets: the other class's logit lowered by α for images of the pair."""
    first, second = classes
    targets = logits.clone()
    targets[labels == first, second] -= alpha
    targets[labels == second, first] -= alpha
    return targets


@dataclass
class SupportSet:
    fingerprint: str
    model: str
    classes: tuple[int, int]
    alphas: list[float]
    states: list[dict[str, Tensor]]  # one state_dict per α, in ``alphas`` order
    settings: dict[str, Any] = field(default_factory=dict)
    losses: list[list[float]] = field(default_factory=list)  # per α: mean MSE per epoch

    def check(self, model: nn.Module) -> None:
        if model_fingerprint(model) != self.fingerprint:
            raise SupportSetError(
                f"this support set was trained from model {self.model!r} with weights "
                f"{self.fingerprint[:12]}…; this model's weights differ"
            )

    def models(self, original: nn.Module) -> list[nn.Module]:
        """Frozen eval-mode copies of the original with each support network's weights."""
        self.check(original)
        result = []
        for state in self.states:
            support = copy.deepcopy(original)
            support.load_state_dict(state)
            result.append(support.eval().requires_grad_(False))
        return result

    def save(self, path: str | Path | None = None) -> Path:
        record = {**vars(self), "classes": list(self.classes)}
        record["states"] = [{k: v.cpu() for k, v in s.items()} for s in self.states]
        path = path or default_support_path(self.fingerprint, self.classes)
        return save_record(path, FORMAT, record)

    @classmethod
    def load(cls, path: str | Path) -> SupportSet:
        record = load_record(path, FORMAT, SupportSetError, "GAD support set")
        record["classes"] = tuple(record["classes"])
        return cls(**record)


def default_support_path(
    fingerprint: str, classes: tuple[int, int], folder: Path | None = None
) -> Path:
    """Where a cache folder (default: the engine cache) keeps the support set of the model with
    these weights for this class pair."""
    low, high = sorted(classes)
    return (folder or cache_dir()) / "gad" / f"{fingerprint[:24]}-{low}-{high}.pt"


def saved_support_sets(fingerprint: str, folder: Path | None = None) -> list[Path]:
    """The support sets a cache folder (default: the engine cache) holds for the model with
    these weights, any class pair."""
    return sorted(((folder or cache_dir()) / "gad").glob(f"{fingerprint[:24]}-*-*.pt"))


def train_support_set(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    classes: tuple[int, int],
    *,
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    epochs: int = 10,
    lr: float = 4e-5,
    batch_size: int = 32,
    seed: int = 0,
    model_name: str = "",
    progress: ProgressFn | None = None,
) -> SupportSet:
    """Fine-tune one support network per α on the images of the class pair (MSE to the targets).

    ``progress(done, total, alpha=…, loss=…)`` is called after every epoch of every α.
    """
    if classes[0] == classes[1]:
        raise SupportSetError("GAD needs two different classes")
    chosen = (labels == classes[0]) | (labels == classes[1])
    if not chosen.any():
        raise SupportSetError(f"no training images of classes {classes}")
    images, labels = images[chosen], labels[chosen]
    missing = [c for c in classes if not (labels == c).any()]
    if missing:
        raise SupportSetError(f"no training images of class {missing[0]}")
    original = copy.deepcopy(model).eval()
    with torch.no_grad():
        logits = torch.cat([original(batch) for batch in images.split(batch_size)])
    states, losses, done = [], [], 0
    for alpha in alphas:
        targets = offset_targets(logits, labels, classes, alpha)
        support = copy.deepcopy(original).requires_grad_(True)
        optimiser = torch.optim.Adam(support.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed)
        history = []
        for _ in range(epochs):
            order, total = torch.randperm(len(labels), generator=generator), 0.0
            for start in range(0, len(order), batch_size):
                checkpoint()
                batch = order[start : start + batch_size].to(images.device)
                loss = nn.functional.mse_loss(support(images[batch]), targets[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(batch)
            history.append(total / len(order))
            done += 1
            if progress is not None:
                progress(done, len(alphas) * epochs, alpha=alpha, loss=history[-1])
        states.append({k: v.detach().clone() for k, v in support.state_dict().items()})
        losses.append(history)
    settings = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
                "images": len(labels)}  # fmt: skip
    return SupportSet(model_fingerprint(model), model_name, tuple(classes), list(alphas), states,
                      settings, losses)  # fmt: skip
