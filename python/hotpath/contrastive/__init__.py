"""Pairwise contrastive losses with memory linear in the batch.

CLIP / InfoNCE, SigLIP, supervised contrastive, triplet (batch-hard / batch-all), DINO and exact
top-k retrieval, single process and distributed (torch.distributed), matching open_clip and
pytorch-metric-learning values. See docs/contrastive.md.
"""
from .losses import (ClipLoss, SigLipLoss, clip_loss, dino_loss, info_nce, siglip_loss, supcon_loss,
                     topk_similarity, triplet_loss, update_center)

dino_update_center = update_center

__all__ = ["ClipLoss", "SigLipLoss", "clip_loss", "siglip_loss", "info_nce", "supcon_loss", "triplet_loss",
           "dino_loss", "update_center", "dino_update_center", "topk_similarity"]
