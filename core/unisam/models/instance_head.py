"""The instance head: foreground and distance-to-edge maps from a SAM image embedding.

micro-sam's automatic instance segmentation (a decoder predicting foreground and distance maps, then a
seeded watershed) in the size of this project's models: a few convolutions on the frozen image
embedding, upscaled x4 as SAM's mask decoder upscales its masks, so that the maps come out on the
same ``image_size / 4`` grid as SAM's low-res mask logits and go through the same upscaling to the
original image (:meth:`unisam.runtime.predictor.Predictor.instance_maps`).
"""

from __future__ import annotations

import torch
from torch import nn

# output channels: foreground logit, logit of the distance to the object's edge (1 at its innermost pixel)
CHANNELS = ("foreground", "distance")


class InstanceHead(nn.Module):
    """``(B, C, h, w)`` image embedding -> ``(B, 2, 4h, 4w)`` logits of :data:`CHANNELS`."""

    def __init__(self, embed_dim: int, hidden: int = 64):
        super().__init__()
        half, quarter = hidden // 2, hidden // 4
        self.net = nn.Sequential(
            nn.Conv2d(embed_dim, hidden, 3, padding=1),
            nn.GELU(),
            nn.ConvTranspose2d(hidden, half, 2, stride=2),
            nn.GroupNorm(4, half),
            nn.GELU(),
            nn.Conv2d(half, half, 3, padding=1),
            nn.GELU(),
            nn.ConvTranspose2d(half, quarter, 2, stride=2),
            nn.GELU(),
            nn.Conv2d(quarter, quarter, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(quarter, len(CHANNELS), 1),
        )

    def forward(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(image_embeddings)
