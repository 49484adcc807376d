"""The SAM 3 tracker (SAM 2 style) as batched building blocks for a streaming engine.

``TrackerModel`` holds every tracker weight under the transformers checkpoint names (strip
``tracker_model.``) and exposes the per-frame steps, all batched over objects (the batch
dimension ``N``; objects may come from different frames and streams):

* ``project_high_res_features``: conv_s0 / conv_s1 on the stride-4 / stride-8 neck levels
  (once per frame, shared by all objects of that frame).
* ``condition_on_memory``: current features + padded memory bank -> conditioned features.
* ``no_memory_features``: the conditioning used on an object's first (prompted) frame.
* ``decode_masks``: SAM head with optional point / box / mask prompts -> masks, IoU,
  object score, object pointer.
* ``init_from_masks``: a given mask (e.g. a new detection) used as the output of a frame.
* ``encode_memory``: frame features + predicted mask -> 64-channel memory map.

Shapes: C = hidden size (256), Cm = memory channels (64), h x w = lowest-resolution tracker
features (72 x 72 at 1008 px), low-res masks are 4h x 4w (288), image_size x image_size the
model input (1008).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam3_runtime.config import TrackerConfig
from sam3_runtime.modeling.position import sine_encoding_1d

from .common import MLP, NO_OBJECT_SCORE, resize_masks
from .mask_decoder import MaskDecoder, MaskDecoderOutput
from .memory_attention import (
    MEMORY_KV_DIM,
    MemoryAttention,
    group_by_layout,
    host_validity,
    indices_to_device,
    layout_indices,
)
from .memory_encoder import MemoryEncoder
from .prompt_encoder import PromptEncoder, RandomFourierEncoding

# Scale / bias turning a binary mask into logits (sigmoid(-10) ~ 4.5e-5) for mask-as-output.
MASK_AS_OUTPUT_SCALE, MASK_AS_OUTPUT_BIAS = 20.0, -10.0


@dataclass
class TrackerMaskOutput:
    low_res_masks: Tensor  # [N, 1, 4h, 4w] chosen mask logits; NO_OBJECT_SCORE where the object is absent
    iou_scores: Tensor  # [N, K] predicted IoU of each candidate (K = 3 multimask, 1 single mask)
    object_score_logits: Tensor  # [N, 1]; > 0 = object visible
    object_pointer: Tensor  # [N, C]; ``no_object_pointer`` where the object is absent
    multimask_logits: Tensor | None = None  # [N, K, 4h, 4w] candidates (after the no-object rule)
    high_res_masks: Tensor | None = None  # [N, 1, image_size, image_size] when requested


@dataclass
class EncodedMemory:
    features: Tensor  # [N, Cm, h, w] spatial memory (``memory_dtype``, bf16 by default as in SAM 3)
    pos_enc: Tensor  # [N, Cm, h, w] its sine position encoding (one map, expanded view)


@dataclass
class MemoryBank:
    """Memories of N objects, padded to common counts S (spatial) and P (pointers).

    ``spatial_offsets`` follow SAM 2: 0 for a conditioning (prompted / re-conditioned) frame,
    k in 1..num_maskmem-1 for the memory from k frames ago; it selects the temporal encoding
    ``memory_temporal_positional_encoding[(k - 1) mod num_maskmem]``. ``pointer_offsets`` are
    signed frame distances ``(current - source) * direction``, normalised by
    ``max_pointer_offset`` before their sine encoding. ``*_valid`` masks (True = real entry)
    may be None when nothing is padded.
    """

    spatial: Tensor | None = None  # [N, S, Cm, h, w]
    spatial_offsets: Tensor | None = None  # [N, S] int
    spatial_valid: Tensor | None = None  # [N, S] bool
    pointers: Tensor | None = None  # [N, P, C]
    pointer_offsets: Tensor | None = None  # [N, P] int or float
    pointer_valid: Tensor | None = None  # [N, P] bool
    # the same validity as host arrays (``gather_banks`` fills them): grouping objects by layout
    # then needs no device read
    spatial_valid_host: np.ndarray | None = None  # [N, S] bool
    pointer_valid_host: np.ndarray | None = None  # [N, P] bool


class TrackerModel(nn.Module):
    def __init__(self, cfg: TrackerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        pcfg = cfg.prompt_encoder_config
        # the reference takes this from the vision config's fpn_hidden_size; all tracker widths agree
        self.hidden_dim = c = cfg.mask_decoder_config.hidden_size
        self.mem_dim = cm = cfg.memory_encoder_output_channels
        self.num_maskmem = cfg.num_maskmem
        self.image_size = cfg.image_size

        self.shared_image_embedding = RandomFourierEncoding(pcfg.hidden_size, scale=pcfg.scale)
        self.prompt_encoder = PromptEncoder(pcfg)
        self.mask_decoder = MaskDecoder(cfg.mask_decoder_config)
        self.memory_attention = MemoryAttention(cfg)
        self.memory_encoder = MemoryEncoder(cfg)

        self.no_memory_embedding = nn.Parameter(torch.zeros(1, 1, c))
        self.no_memory_positional_encoding = nn.Parameter(torch.zeros(1, 1, c))  # in checkpoints, unused
        self.memory_temporal_positional_encoding = nn.Parameter(torch.zeros(cfg.num_maskmem, 1, 1, cm))
        self.no_object_pointer = nn.Parameter(torch.zeros(1, c))
        # brings a full-resolution mask prompt to the SAM logit scale at stride 4
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self._sine_cache: dict[tuple, Tensor] = {}  # memory sine encodings per geometry, not in the state dict
        self.object_pointer_proj = MLP(c, c, c, 3)
        if cfg.enable_temporal_pos_encoding_for_object_pointers:
            self.temporal_positional_encoding_projection_layer: nn.Module = nn.Linear(c, cm)
        else:
            self.temporal_positional_encoding_projection_layer = nn.Identity()
        if cfg.enable_occlusion_spatial_embedding:
            self.occlusion_spatial_embedding_parameter: nn.Parameter | None = nn.Parameter(torch.zeros(1, cm))
        else:
            self.occlusion_spatial_embedding_parameter = None

    # -- small helpers ----------------------------------------------------------------------
    def project_high_res_features(self, feat_s0: Tensor, feat_s1: Tensor) -> tuple[Tensor, Tensor]:
        """Neck levels ``[B, C, 4h, 4w]`` / ``[B, C, 2h, 2w]`` -> decoder skip inputs (C/8, C/4 channels)."""
        return self.mask_decoder.conv_s0(feat_s0), self.mask_decoder.conv_s1(feat_s1)

    def image_positional_embeddings(self, dtype: torch.dtype) -> Tensor:
        """Dense position encoding of the decoder's image tokens, ``[1, C, h, w]``."""
        return self.shared_image_embedding.grid(*self.prompt_encoder.image_embedding_size).to(dtype)

    def no_memory_features(self, features: Tensor) -> Tensor:
        """Conditioning for frames without memory (an object's initial prompted frame)."""
        return features + self.no_memory_embedding.reshape(1, -1, 1, 1).to(features.dtype)

    def use_multimask(self, is_init_cond_frame: bool, num_points: int) -> bool:
        """SAM 2's rule for asking the decoder for 3 candidates (tracking without clicks: yes)."""
        cfg = self.cfg
        return (
            cfg.multimask_output_in_sam
            and (is_init_cond_frame or cfg.multimask_output_for_tracking)
            and cfg.multimask_min_pt_num <= num_points <= cfg.multimask_max_pt_num
        )

    def upscale_masks(self, masks: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Bilinear upsampling of mask logits (fp32 inside) to ``size`` (default image_size)."""
        size = size or (self.image_size, self.image_size)
        return F.interpolate(masks.float(), size=size, mode="bilinear", align_corners=False).to(masks.dtype)

    # -- SAM head ---------------------------------------------------------------------------
    def decode_masks(
        self,
        image_embeddings: Tensor,
        high_res_features: tuple[Tensor, Tensor],
        *,
        points: Tensor | None = None,
        point_labels: Tensor | None = None,
        boxes: Tensor | None = None,
        mask_inputs: Tensor | None = None,
        multimask_output: bool = True,
        return_high_res_masks: bool = False,
    ) -> TrackerMaskOutput:
        """Run the prompt encoder + mask decoder for N objects.

        image_embeddings: ``[N, C, h, w]`` conditioned features (``condition_on_memory`` or
        ``no_memory_features``). high_res_features: output of ``project_high_res_features``,
        batch N or 1. points ``[N, K, 2]`` pixels + point_labels ``[N, K]``; boxes ``[N, 4]``
        xyxy pixels; mask_inputs ``[N, 1, H, W]`` mask logits (resized to 4h x 4w if needed).
        Without points and boxes a single "not a point" prompt is used, as in SAM 2 tracking.
        With ``multimask_output`` the candidate with the highest predicted IoU is chosen.
        """
        n = image_embeddings.shape[0]
        if points is None and boxes is None:
            points = image_embeddings.new_zeros(n, 1, 2)
            point_labels = torch.full((n, 1), -1, dtype=torch.int32, device=image_embeddings.device)
        if mask_inputs is not None:
            mask_inputs = resize_masks(mask_inputs, self.prompt_encoder.mask_input_size)
        sparse, dense = self.prompt_encoder(points, point_labels, boxes, mask_inputs, batch_size=n)
        out = self.mask_decoder(
            image_embeddings,
            self.image_positional_embeddings(image_embeddings.dtype),
            sparse,
            dense,
            high_res_features,
            multimask_output,
        )
        return self._choose_mask(out, multimask_output, return_high_res_masks)

    def _choose_mask(self, out: MaskDecoderOutput, multimask: bool, high_res: bool) -> TrackerMaskOutput:
        visible = out.object_score_logits > 0  # [N, 1]
        # memories must agree with the hard visible / not-visible decision
        masks = torch.where(visible[:, :, None, None], out.masks, torch.full_like(out.masks, NO_OBJECT_SCORE))
        if multimask:
            best = out.iou_scores.argmax(dim=-1)
            rows = torch.arange(masks.shape[0], device=masks.device)
            low_res, token = masks[rows, best].unsqueeze(1), out.mask_tokens[rows, best]
        else:
            low_res, token = masks[:, :1], out.mask_tokens[:, 0]
        pointer = self.object_pointer_proj(token)
        pointer = torch.where(visible, pointer, self.no_object_pointer.to(pointer.dtype))
        return TrackerMaskOutput(
            low_res_masks=low_res,
            iou_scores=out.iou_scores,
            object_score_logits=out.object_score_logits,
            object_pointer=pointer,
            multimask_logits=masks,
            high_res_masks=self.upscale_masks(low_res) if high_res else None,
        )

    def init_from_masks(
        self, image_embeddings: Tensor, high_res_features: tuple[Tensor, Tensor], masks: Tensor
    ) -> TrackerMaskOutput:
        """Take given masks (bool or [0, 1] float, ``[N, 1, H, W]``, any size) as the frame's output.

        Mask logits are ``20 * mask - 10``; the object pointer comes from the SAM head prompted
        with the mask. image_embeddings must be the *raw* frame features (no memory and no
        "no memory" embedding), as in the reference. Visibility is "mask non-empty"; the
        returned ``high_res_masks`` is what ``encode_memory`` should use, with ``binarize``.
        """
        dtype = image_embeddings.dtype
        mask = resize_masks(masks, (self.image_size, self.image_size)).to(dtype)
        high_res = mask * MASK_AS_OUTPUT_SCALE + MASK_AS_OUTPUT_BIAS
        low_res = F.interpolate(
            high_res.float(),
            size=self.prompt_encoder.mask_input_size,
            mode="bilinear",
            align_corners=False,
            antialias=True,
        ).to(dtype)
        prompted = self.decode_masks(
            image_embeddings, high_res_features, mask_inputs=self.mask_downsample(mask), multimask_output=True
        )
        visible = masks.flatten(1).float().gt(0).any(dim=1, keepdim=True)  # [N, 1]
        pointer = torch.where(visible, prompted.object_pointer, self.no_object_pointer.to(dtype))
        score = visible.to(dtype) * MASK_AS_OUTPUT_SCALE + MASK_AS_OUTPUT_BIAS
        return TrackerMaskOutput(
            low_res_masks=low_res,
            iou_scores=low_res.new_ones(low_res.shape[0], 1),
            object_score_logits=score,
            object_pointer=pointer,
            high_res_masks=high_res,
        )

    # -- memory ------------------------------------------------------------------------------
    def encode_memory(
        self,
        features: Tensor,
        mask_logits: Tensor,
        object_score_logits: Tensor,
        binarize: bool | Tensor = False,
        memory_dtype: torch.dtype | None = torch.bfloat16,
    ) -> EncodedMemory:
        """Encode each object's mask on its frame into a spatial memory.

        features: ``[N or 1, C, h, w]`` raw (unconditioned) lowest-resolution frame features.
        mask_logits: ``[N, 1, H, W]`` at any resolution (low-res 4h or image_size); resized to
        the encoder's ``16h x 16w`` input with antialiased bilinear. object_score_logits:
        ``[N, 1]`` or ``[N]``; objects with a score <= 0 get the occlusion embedding added.
        binarize: bool or ``[N]`` bool, True for masks that came from a prompt (threshold at
        0 instead of sigmoid). memory_dtype: storage dtype of the result; SAM 3 keeps memories
        in bfloat16, pass None to keep the compute dtype.
        """
        dtype = features.dtype
        h, w = features.shape[-2:]
        stride = self.cfg.mask_downsampler_total_stride
        logits = resize_masks(mask_logits, (h * stride, w * stride)).float()
        binarize = torch.as_tensor(binarize, device=logits.device).reshape(-1, 1, 1, 1)
        prob = torch.where(binarize, (logits > 0).float(), torch.sigmoid(logits))
        mask_in = (prob * self.cfg.sigmoid_scale_for_mem_enc + self.cfg.sigmoid_bias_for_mem_enc).to(dtype)
        memory, pos = self.memory_encoder(features, mask_in)
        if self.occlusion_spatial_embedding_parameter is not None:
            visible = (object_score_logits.reshape(-1) > 0).to(memory.dtype)
            occlusion = self.occlusion_spatial_embedding_parameter.to(memory.dtype).reshape(1, -1, 1, 1)
            memory = memory + (1 - visible).reshape(-1, 1, 1, 1) * occlusion
        if memory_dtype is not None:
            memory = memory.to(memory_dtype)
        return EncodedMemory(memory, pos)

    def condition_on_memory(
        self,
        features: Tensor,
        feature_pos: Tensor,
        bank: MemoryBank,
        max_pointer_offset: float | None = None,
        frame_index: Tensor | None = None,
    ) -> Tensor:
        """Fuse the current frame features with each object's memories (memory attention).

        features / feature_pos: ``[F, C, h, w]`` / ``[1 or F, C, h, w]`` raw lowest-resolution
        features of the objects' frames and their sine position encoding. frame_index: ``[N]``
        which frame each object reads; without it F is 1 (or a view expanded over the objects)
        or F = N in object order. Layer 0's self-attention runs once per frame. bank: see
        ``MemoryBank``; objects are grouped by memory layout on the host, so attention runs
        unmasked. max_pointer_offset: normaliser of pointer distances; default
        ``max_object_pointers_in_encoder - 1`` (the streaming setting). Objects with no valid
        memory at all get ``no_memory_features``. Returns ``[N, C, h, w]``.
        """
        if self.num_maskmem == 0 or (_entries(bank.spatial) == 0 and _entries(bank.pointers) == 0):
            picked = features if frame_index is None else features.index_select(0, frame_index.to(features.device))
            return self.no_memory_features(picked) if self.num_maskmem else picked
        if frame_index is None and (features.shape[0] == 1 or features.stride(0) == 0):
            features, feature_pos = features[:1], feature_pos[:1]
        f, c, h, w = features.shape
        cm, dtype, device, grid = self.mem_dim, features.dtype, features.device, h * w
        if cm != MEMORY_KV_DIM or c % cm:
            raise ValueError(
                f"memory attention needs {MEMORY_KV_DIM}-channel memories and a hidden size divisible by "
                f"them; this config has memory_encoder_output_channels={cm}, hidden size {c}"
            )
        n = (bank.spatial if _entries(bank.spatial) else bank.pointers).shape[0]
        if frame_index is None and f not in (1, n):
            raise ValueError(f"{f} feature maps for {n} objects: pass frame_index to condition_on_memory")
        frame_index = None if frame_index is None else frame_index.to(device, torch.long)
        s_valid, p_valid = host_validity(
            n,
            (bank.spatial if _entries(bank.spatial) else None, bank.spatial_valid, bank.spatial_valid_host),
            (bank.pointers if _entries(bank.pointers) else None, bank.pointer_valid, bank.pointer_valid_host),
        )
        groups = group_by_layout(s_valid, p_valid)
        whole = len(groups) == 1 and s_valid.all() and p_valid.all()  # nothing to pack: no gathers, no indices
        flat = [] if whole else layout_indices(groups, s_valid.shape[1], p_valid.shape[1])
        index = iter(indices_to_device(flat, device) if flat else [None] * 3)
        splits = c // cm
        if s_valid.shape[1]:
            s = s_valid.shape[1]
            spatial = bank.spatial.permute(0, 1, 3, 4, 2).reshape(n * s, grid, cm)  # a view of gather_banks' layout
            slot = torch.remainder(bank.spatial_offsets.long() - 1, self.num_maskmem).reshape(-1)
            temporal = self.memory_temporal_positional_encoding.to(dtype).reshape(self.num_maskmem, cm)[slot]
            sine = self._memory_sine(h, w, device, dtype)
        if p_valid.shape[1]:
            if self.cfg.enable_temporal_pos_encoding_for_object_pointers:
                default = self.cfg.max_object_pointers_in_encoder - 1
                norm = float(default if max_pointer_offset is None else max_pointer_offset)
                # fp32 angles, as in the reference (bf16 would blur distances); [N, P, C] is small
                pe = sine_encoding_1d(bank.pointer_offsets.float() / norm, c).to(dtype)
                ptr_pos = self.temporal_positional_encoding_projection_layer(pe).flatten(0, 1)
            else:
                ptr_pos = bank.pointers.new_zeros(n * p_valid.shape[1], cm, dtype=dtype)
            pointers = bank.pointers.flatten(0, 1)

        tokens = features.flatten(2).transpose(1, 2)
        x, rope = self.memory_attention.begin(tokens, feature_pos.to(dtype).flatten(2).transpose(1, 2), (h, w))
        out = x.new_empty(n, grid, c)
        for g in groups:
            rows, s_idx, p_idx = next(index), next(index), next(index)
            k = g.rows.size
            # each object's frame; None: one frame for all, or the frames are the objects themselves
            if f == 1 or (whole and frame_index is None):
                frame = None
            else:
                frame = rows if frame_index is None else frame_index if whole else frame_index.index_select(0, rows)
            if g.spatial.shape[1] == 0 and g.pointers.shape[1] == 0:
                out.index_copy_(0, rows, _pick(tokens, frame, k) + self.no_memory_embedding.to(dtype))
                continue
            keys, values = [], []
            if g.spatial.shape[1]:
                mem = (spatial if whole else spatial.index_select(0, s_idx)).to(dtype).unflatten(0, (k, -1))
                pos = sine + (temporal if whole else temporal.index_select(0, s_idx)).unflatten(0, (k, -1))[:, :, None]
                keys.append((mem + pos).flatten(1, 2))  # memory + position once per step, for every layer
                values.append(mem.flatten(1, 2))
            if g.pointers.shape[1]:
                # a C-wide pointer becomes C / Cm consecutive memory tokens sharing one position
                mem = (pointers if whole else pointers.index_select(0, p_idx)).to(dtype).reshape(k, -1, cm)
                pos = (ptr_pos if whole else ptr_pos.index_select(0, p_idx)).reshape(k, -1, cm)
                keys.append(mem + pos.repeat_interleave(splits, dim=1))
                values.append(mem)
            xg = _pick(x, frame, k)
            key, value = (torch.cat(t, dim=1) if len(t) > 1 else t[0] for t in (keys, values))
            result = self.memory_attention.finish(xg, key, value, rope, g.pointers.shape[1] * splits)
            if whole:
                out = result
            else:
                out.index_copy_(0, rows, result)
        return out.transpose(1, 2).reshape(n, c, h, w)

    def _memory_sine(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The memory maps' sine position encoding as ``[h*w, Cm]`` tokens, cached per geometry (a constant)."""
        key = (h, w, device, dtype)
        if key not in self._sine_cache:
            with torch.inference_mode(False):
                pe = self.memory_encoder.position_encoding(h, w, device=device, dtype=dtype)
                self._sine_cache[key] = pe.flatten(2)[0].transpose(0, 1).contiguous()
        return self._sine_cache[key]


def _pick(t: Tensor, frame: Tensor | None, k: int) -> Tensor:
    return t.expand(k, -1, -1) if frame is None else t.index_select(0, frame)


def _entries(t: Tensor | None) -> int:
    return 0 if t is None else t.shape[1]

