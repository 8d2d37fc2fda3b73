"""Sigmoid product-background fusion of per-class probabilities, streamed over classes.

Each class is segmented on its own (one sigmoid per class), so overlaps must be resolved:
background = prod_c (1 - p_c), label = argmax over [background, p_1, ..., p_K] (paper 000).
Kept as running volumes (log-background sum, best probability, best label) so that memory
does not grow with K: a 100-class case costs what a 1-class case costs.

A class may bring a `penalty` (log-odds) that lowers its bid in the argmax only, not its share
of the background: touching parcels of one tissue, whose masks overlap, bid by how deep in
their own box a voxel lies (app.fuse.parcel_penalty). A penalty reorders sure claims only: where
a class has p > 0.5 its bid stays above every unsure class's (floored at CONFIDENT_FLOOR x its
log-odds, which keeps the order of the probabilities), so a voxel that only a penalised class is
sure of is not handed to a class that gives it 2 %. A fourth volume, the running bid, is made
on the first penalty; until then the bid is the probability itself.
"""

from __future__ import annotations

import numpy as np
import torch

EPS = 1e-6
CONFIDENT_FLOOR = 0.01


class StreamingFusion:
    def __init__(self, shape: tuple[int, int, int]):
        self.log_background = torch.zeros(shape, dtype=torch.float32)
        self.best_prob = torch.zeros(shape, dtype=torch.float32)
        self.best_label = torch.zeros(shape, dtype=torch.uint8)
        self.best_bid: torch.Tensor | None = None  # log-odds less penalty, once a class brings one

    def add(self, label: int, probs: torch.Tensor, region: tuple[slice, slice, slice],
            penalty: torch.Tensor | None = None) -> None:
        """Fold one class's probabilities on `region` of the image in (zero elsewhere);
        `penalty` (on `region`) lowers its bid for the argmax."""
        probs = probs.to(torch.float32).clamp(0.0, 1.0 - EPS)
        self.log_background[region] += torch.log1p(-probs)
        if penalty is not None and self.best_bid is None:
            self.best_bid = torch.logit(self.best_prob, eps=EPS)
        if self.best_bid is None:
            better = probs > self.best_prob[region]
        else:
            bid = torch.logit(probs, eps=EPS)
            if penalty is not None:
                bid = torch.where(bid > 0, torch.maximum(bid - penalty, CONFIDENT_FLOOR * bid), bid)
            best_bid = self.best_bid[region]
            better = bid > best_bid
            best_bid[better] = bid[better]
        self.best_prob[region][better] = probs[better]
        self.best_label[region][better] = label

    def labels(self) -> np.ndarray:
        """uint8 labels: the best class where it beats the product background, else 0."""
        wins = self.best_prob > torch.exp(self.log_background)
        return torch.where(wins, self.best_label, torch.zeros_like(self.best_label)).numpy()
