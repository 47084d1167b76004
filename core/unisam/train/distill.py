"""EdgeSAM's two-phase knowledge distillation from a SAM-family teacher into a small student.

Phase 1, :func:`distill_encoder`: encoder-only distillation. The student's image encoder learns to
reproduce the teacher's image embedding (pixel-wise MSE, the padding masked out: EdgeSAM's Eq. 1).

Phase 2, :func:`distill_decoder`: prompt-in-the-loop distillation. The student's prompt encoder and
mask decoder start from the teacher's (:func:`make_student`); the same box or point prompts go to
both models, and the student's masks learn the teacher's thresholded masks (dice + BCE on the
low-resolution logits, all four outputs, padding masked out: EdgeSAM's Eq. 2). Each loop then adds
one click where the two models disagree (positive where the teacher says foreground and the student
background, negative the reverse; sampled on the mask of the teacher's best output) to the prompts
of both, and decodes again. Optional background boxes (``background_rate``, on box steps, where no
instance is) go to both as well, so the student keeps the teacher's "nothing here" answers. As in
EdgeSAM the student's image encoder and mask decoder train, its prompt encoder is frozen and the
teacher is frozen. One addition: the student's IoU head also learns the teacher's IoU predictions
(MSE, ``iou_weight``), so that the scores that segment-everything filters on stay calibrated.

Teacher: any :class:`~unisam.models.Sam` (an official checkpoint, or a teacher trained here).
Student: any encoder whose embedding has the teacher's shape, e.g. an EdgeSAM-style RepViT with a
narrow ``cfgs``, with a SAM decoder of the teacher's dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from ..models import Sam, build_sam
from .data import Source
from .losses import embedding_mse, mask_loss
from .supervised import Batch, LoopConfig, RoundLosses, add_correction, run_phase, start_step


@dataclass
class EncoderDistillConfig(LoopConfig):
    """Phase 1 (EdgeSAM: AdamW, cosine schedule, weight decay 0.01)."""


@dataclass
class DecoderDistillConfig(LoopConfig):
    """Phase 2. EdgeSAM: one loop (``decode_iters`` 2), box or point prompts with equal chance,
    dice 5 + BCE 5, weight decay 0.05; lr 1e-4 -> 1e-5 when fine-tuning from SAM-scale weights."""

    lr: float = 1e-4
    weight_decay: float = 0.05
    decode_iters: int = 2
    box_prob: float = 0.5
    box_noise: float = 0.0
    dice_weight: float = 5.0
    bce_weight: float = 5.0
    iou_weight: float = 1.0
    train_decoder: bool = True  # False freezes the mask decoder too (EdgeSAM's best in-domain setting)


def make_student(teacher: Sam, encoder: str, encoder_kwargs: dict[str, Any]) -> Sam:
    """A student with the given image encoder, the teacher's input size, normalisation and decoder
    dimensions, and a copy of the teacher's prompt encoder and mask decoder weights."""
    spec = replace(teacher.spec, encoder=encoder, encoder_kwargs=dict(encoder_kwargs))
    student = build_sam(spec)
    student.prompt_encoder.load_state_dict(teacher.prompt_encoder.state_dict())
    student.mask_decoder.load_state_dict(teacher.mask_decoder.state_dict())
    return student


def _check_pair(teacher: Sam, student: Sam) -> None:
    t, s = teacher.spec, student.spec
    if (t.image_size, t.embedding_chans) != (s.image_size, s.embedding_chans):
        raise ValueError(
            f"teacher (image_size {t.image_size}, embedding channels {t.embedding_chans}) and student (image_size "
            f"{s.image_size}, embedding channels {s.embedding_chans}) must share the input size and embedding width"
        )
    if t.pixel_mean != s.pixel_mean or t.pixel_std != s.pixel_std:
        raise ValueError("teacher and student must normalise images the same way (pixel_mean/pixel_std)")


def _freeze(model: Sam) -> None:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def embedding_valid(batch: Batch, grid: int) -> torch.Tensor:
    """``(B, grid, grid)`` bool: embedding cells mostly inside the image (EdgeSAM: the valid map
    resized bilinearly and thresholded at 0.5)."""
    v = F.interpolate(batch.valid[:, None].float(), (grid, grid), mode="bilinear", align_corners=False)
    return v[:, 0] > 0.5


def encoder_distill_loss(teacher: Sam, student: Sam, batch: Batch) -> dict[str, torch.Tensor]:
    """Phase-1 loss of one batch: masked MSE between the student's and the teacher's embeddings."""
    with torch.no_grad():
        target = teacher.embed_image(batch.images)
    pred = student.embed_image(batch.images)
    loss = embedding_mse(pred, target, embedding_valid(batch, target.shape[-1]))
    return {"loss": loss}


def decoder_distill_loss(
    teacher: Sam, student: Sam, batch: Batch, config: DecoderDistillConfig, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Phase-2 loss of one batch, averaged over the decode rounds (see the module docstring)."""
    with torch.no_grad():
        t_emb = teacher.embed_image(batch.images)
    s_emb = student.embed_image(batch.images)
    if not len(batch.masks):
        return RoundLosses.zero(s_emb)
    grid, size = student.spec.low_res_size, student.image_size
    _, batch, prompts, present = start_step(batch, config, generator)
    idx = batch.image_index
    valid = F.avg_pool2d(batch.valid[:, None].float(), size // grid)[idx]  # (M, 1, grid, grid) coverage
    losses = RoundLosses(config.decode_iters, config.iou_weight)
    for it in range(config.decode_iters):
        coords, labels = prompts.tokens()
        with torch.no_grad():
            t_low, t_iou = teacher.forward_decoder(t_emb, coords, labels, None, num_outputs=4, image_index=idx)
        s_low, s_iou = student.forward_decoder(s_emb, coords, labels, None, num_outputs=4, image_index=idx)
        losses.add(mask_loss(s_low, (t_low > 0).float(), valid, config.dice_weight, config.bce_weight).mean(),
                   F.mse_loss(s_iou, t_iou))
        if it + 1 < config.decode_iters:
            rows = torch.arange(len(idx))
            best = t_iou.argmax(1)
            teacher_mask = t_low[rows, best] > 0
            student_mask = s_low.detach()[rows, best] > 0
            prompts = add_correction(prompts, present, student_mask, teacher_mask, valid[:, 0] > 0.5, size,
                                     generator, it == 0)
    return losses.result()


def distill_encoder(
    teacher: Sam,
    student: Sam,
    source: Source,
    out_dir: str | Path,
    config: EncoderDistillConfig,
    *,
    val_source: Source | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
) -> dict:
    """Phase 1: train ``student.image_encoder`` to match ``teacher``'s embeddings on ``source``'s
    images. Validation reports the student's box / centre mIoU with its current decoder. Output
    folder, resuming and summary as :func:`~unisam.train.supervised.run_loop`."""
    _check_pair(teacher, student)
    _freeze(teacher)

    def batch_loss(batch: Batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return encoder_distill_loss(teacher, student, batch)

    params = list(student.image_encoder.parameters())
    return run_phase(student, params, batch_loss, source, config, out_dir, val_source=val_source, resume=resume,
                     stop_at=stop_at, progress=progress, desc="distill-encoder", train_modules=[student.image_encoder])


def distill_decoder(
    teacher: Sam,
    student: Sam,
    source: Source,
    out_dir: str | Path,
    config: DecoderDistillConfig,
    *,
    val_source: Source | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
) -> dict:
    """Phase 2: prompt-in-the-loop distillation of ``student`` (image encoder + mask decoder; the
    prompt encoder is frozen) from ``teacher`` on ``source``; the ground-truth masks only provide the
    first prompts. Output folder, resuming and summary as :func:`~unisam.train.supervised.run_loop`."""
    _check_pair(teacher, student)
    _freeze(teacher)
    for p in student.prompt_encoder.parameters():
        p.requires_grad_(False)
    modules = [student.image_encoder] + ([student.mask_decoder] if config.train_decoder else [])
    for p in student.mask_decoder.parameters():
        p.requires_grad_(config.train_decoder)

    def batch_loss(batch: Batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return decoder_distill_loss(teacher, student, batch, config, generator)

    params = [p for m in modules for p in m.parameters()]
    return run_phase(student, params, batch_loss, source, config, out_dir, val_source=val_source, resume=resume,
                     stop_at=stop_at, progress=progress, desc="distill-decoder", train_modules=modules)
