"""Official SAM 3 checkpoint (``sam3.pt``) key space -> canonical (transformers-format) key space.

The official checkpoint names modules after Meta's code (``detector.*``, ``tracker.*``); our modules
use the transformers names (``detector_model.*``, ``tracker_model.*``, ``tracker_neck.*``). The mapping
is a table of rules. Each rule full-matches one family of official keys and names where its tensor
goes, plus a tensor transform for the few entries whose layout differs:

* fused attention projections (``attn.qkv``, ``in_proj_weight``/``in_proj_bias``) split into q/k/v
  (rows ``[0:E]``, ``[E:2E]``, ``[2E:3E]`` are q, k, v);
* the ViT position table carries a class-token row that SAM 3 never uses (577 = 1 + 24**2 rows) and is dropped;
* CLIP's ``text_projection`` is stored as ``(in, out)`` for ``x @ P``; a Linear weight is ``(out, in)``;
* the tracker's four point embeddings (four ``1 x C`` tables) become one ``4 x C`` table;
* the prompt encoder's random Fourier matrix is also the tracker's image positional encoding, so it fills two keys;
* precomputed RoPE tables (``freqs_cis``) and the geometry encoder's point projections, which the
  transformers model does not have, are known and dropped on purpose.

Everything here works on meta tensors as well, so the whole table can be checked against the
reference key lists without allocating weights. Key facts come from the checkpoints' key lists and
the documented behaviour of transformers' SAM 3 conversion script.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

QKV = "{qkv}"  # placeholder in a target template, expanded to q, k and v by a SPLIT_QKV rule
_P = r"(?P<p>weight|bias)"  # parameter name
_I = r"(?P<i>\d+)"  # layer index


class Transform(enum.Enum):
    COPY = "copy"  # the same tensor goes to every target
    SPLIT_QKV = "split_qkv"  # chunk dim 0 into as many parts as targets
    DROP_CLS_TOKEN = "drop_cls_token"  # (1, 1 + N, C) -> (1, N, C)
    TRANSPOSE = "transpose"  # (in, out) -> (out, in)
    STACK_ROWS = "stack_rows"  # the match's `row` group gives this tensor's row in the target


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    targets: tuple[str, ...]  # `re` templates; empty = known key, dropped on purpose
    transform: Transform = Transform.COPY

    def target_keys(self, match: re.Match[str]) -> list[str]:
        return [match.expand(t) for t in self.targets]


def _rule(pattern: str, *targets: str, transform: Transform = Transform.COPY) -> Rule:
    if len(targets) == 1 and QKV in targets[0]:
        targets = tuple(targets[0].replace(QKV, x) for x in "qkv")
        transform = Transform.SPLIT_QKV
    return Rule(re.compile(pattern), targets, transform)


def _esc(prefix: str) -> str:
    return re.escape(prefix)


# --- helpers that spell out recurring module shapes ------------------------------------------


def _fused_mha(src: str, dst: str, out: str = "o_proj") -> list[Rule]:
    """torch.nn.MultiheadAttention (fused in_proj) -> separate q/k/v/out Linear layers."""
    return [
        _rule(src + r"\.in_proj_(?P<p>weight|bias)", dst + r".{qkv}_proj.\g<p>"),
        _rule(src + r"\.out_proj\." + _P, dst + rf".{out}.\g<p>"),
    ]


def _split_mha(src: str, dst: str) -> list[Rule]:
    """SAM-style attention with separate q/k/v Linear layers; only the output name changes."""
    return [
        _rule(src + r"\.(?P<n>[qkv])_proj\." + _P, dst + r".\g<n>_proj.\g<p>"),
        _rule(src + r"\.out_proj\." + _P, dst + r".o_proj.\g<p>"),
    ]


def _renames(src: str, dst: str, names: Mapping[str, str]) -> list[Rule]:
    """Plain renames of whole submodules (every parameter under them)."""
    return [_rule(src + _esc(a) + r"\.(?P<rest>weight|bias)", dst + b + r".\g<rest>") for a, b in names.items()]


def _mlp_1based(src: str, dst: str, n: int) -> list[Rule]:
    """``layers.k`` -> ``layer{k+1}`` (the detector's MLPs)."""
    return [_rule(src + rf"\.layers\.{k}\." + _P, dst + rf".layer{k + 1}.\g<p>") for k in range(n)]


def _mlp_in_out(src: str, dst: str, n: int) -> list[Rule]:
    """``layers.0`` -> ``proj_in``, ``layers.{n-1}`` -> ``proj_out``, the hidden ones renumbered from 0."""
    names = ["proj_in"] + [f"layers.{k}" for k in range(n - 2)] + ["proj_out"]
    return [_rule(src + rf"\.layers\.{k}\." + _P, dst + rf".{name}.\g<p>") for k, name in enumerate(names)]


def _fusion_layer(src: str, dst: str) -> list[Rule]:
    """Pre-norm self-attention + image cross-attention + FFN layer (geometry and DETR encoders)."""
    return [
        *_fused_mha(src + r"\.self_attn", dst + ".self_attn"),
        *_fused_mha(src + r"\.cross_attn_image", dst + ".cross_attn"),
        _rule(src + r"\.linear(?P<n>[12])\." + _P, dst + r".mlp.fc\g<n>.\g<p>"),
        _rule(src + r"\.norm(?P<n>[123])\." + _P, dst + r".layer_norm\g<n>.\g<p>"),
    ]


def _fpn(src: str, dst: str) -> list[Rule]:
    # The scale stage is a Sequential in the canonical model: deconv, GELU, deconv for 4x, so the
    # second deconv sits at index 2; a lone deconv (2x) at index 0; 1x and 0.5x have no weights.
    s, d = src + _I + r"\.", dst + r".\g<i>."
    return [
        _rule(s + r"dconv_2x2(?:_0)?\." + _P, d + r"scale_layers.0.\g<p>"),
        _rule(s + r"dconv_2x2_1\." + _P, d + r"scale_layers.2.\g<p>"),
        _rule(s + r"conv_1x1\." + _P, d + r"proj1.\g<p>"),
        _rule(s + r"conv_3x3\." + _P, d + r"proj2.\g<p>"),
    ]


# --- the table ---------------------------------------------------------------------------------

_VIT, _VIT_D = r"detector\.backbone\.vision_backbone\.trunk\.", "detector_model.vision_encoder.backbone."
_TXT, _TXT_D = r"detector\.backbone\.language_backbone\.encoder\.", "detector_model.text_encoder."
_GEO, _GEO_D = r"detector\.geometry_encoder\.", "detector_model.geometry_encoder."
_DEC, _DEC_D = r"detector\.transformer\.decoder\.", "detector_model.detr_decoder."
_SEG, _SEG_D = r"detector\.segmentation_head\.", "detector_model.mask_decoder."
_DOT, _DOT_D = r"detector\.dot_prod_scoring\.", "detector_model.dot_product_scoring."
_TRK, _TRK_D = r"tracker\.", "tracker_model."
_MEM, _MEM_D = r"tracker\.maskmem_backbone\.", "tracker_model.memory_encoder."
_PE, _PE_D = r"tracker\.sam_prompt_encoder\.", "tracker_model.prompt_encoder."
_MD, _MD_D = r"tracker\.sam_mask_decoder\.", "tracker_model.mask_decoder."
_MDL, _MDL_D = _MD + r"transformer\.layers\." + _I, _MD_D + r"transformer.layers.\g<i>"

RULES: tuple[Rule, ...] = (
    # ViT backbone
    _rule(_VIT + r"pos_embed", _VIT_D + "embeddings.position_embeddings", transform=Transform.DROP_CLS_TOKEN),
    _rule(_VIT + r"patch_embed\.proj\." + _P, _VIT_D + r"embeddings.patch_embeddings.projection.\g<p>"),
    _rule(_VIT + r"ln_pre\." + _P, _VIT_D + r"layer_norm.\g<p>"),
    _rule(_VIT + r"blocks\." + _I + r"\.norm(?P<n>[12])\." + _P, _VIT_D + r"layers.\g<i>.layer_norm\g<n>.\g<p>"),
    _rule(_VIT + r"blocks\." + _I + r"\.attn\.qkv\." + _P, _VIT_D + r"layers.\g<i>.attention.{qkv}_proj.\g<p>"),
    _rule(_VIT + r"blocks\." + _I + r"\.attn\.proj\." + _P, _VIT_D + r"layers.\g<i>.attention.o_proj.\g<p>"),
    _rule(_VIT + r"blocks\." + _I + r"\.mlp\.fc(?P<n>[12])\." + _P, _VIT_D + r"layers.\g<i>.mlp.fc\g<n>.\g<p>"),
    _rule(_VIT + r"blocks\." + _I + r"\.attn\.freqs_cis"),  # RoPE table, recomputed at run time
    # FPN necks: `convs` feed the detector, `sam2_convs` the tracker
    *_fpn(r"detector\.backbone\.vision_backbone\.convs\.", "detector_model.vision_encoder.neck.fpn_layers"),
    *_fpn(r"detector\.backbone\.vision_backbone\.sam2_convs\.", "tracker_neck.fpn_layers"),
    # CLIP text encoder and the 1024 -> 256 resizer
    _rule(_TXT + r"token_embedding\.weight", _TXT_D + "text_model.embeddings.token_embedding.weight"),
    _rule(_TXT + r"positional_embedding", _TXT_D + "text_model.embeddings.position_embedding.weight"),
    _rule(_TXT + r"ln_final\." + _P, _TXT_D + r"text_model.final_layer_norm.\g<p>"),
    _rule(_TXT + r"text_projection", _TXT_D + "text_projection.weight", transform=Transform.TRANSPOSE),
    *_fused_mha(
        _TXT + r"transformer\.resblocks\." + _I + r"\.attn",
        _TXT_D + r"text_model.encoder.layers.\g<i>.self_attn",
        out="out_proj",
    ),
    _rule(
        _TXT + r"transformer\.resblocks\." + _I + r"\.ln_(?P<n>[12])\." + _P,
        _TXT_D + r"text_model.encoder.layers.\g<i>.layer_norm\g<n>.\g<p>",
    ),
    _rule(
        _TXT + r"transformer\.resblocks\." + _I + r"\.mlp\.c_fc\." + _P,
        _TXT_D + r"text_model.encoder.layers.\g<i>.mlp.fc1.\g<p>",
    ),
    _rule(
        _TXT + r"transformer\.resblocks\." + _I + r"\.mlp\.c_proj\." + _P,
        _TXT_D + r"text_model.encoder.layers.\g<i>.mlp.fc2.\g<p>",
    ),
    _rule(r"detector\.backbone\.language_backbone\.resizer\." + _P, r"detector_model.text_projection.\g<p>"),
    # geometry (box prompt) encoder
    *_renames(
        _GEO,
        _GEO_D,
        {
            "label_embed": "label_embed",
            "cls_embed": "cls_embed",
            "boxes_direct_project": "boxes_direct_project",
            "boxes_pool_project": "boxes_pool_project",
            "boxes_pos_enc_project": "boxes_pos_enc_project",
            "final_proj": "final_proj",
            "norm": "prompt_layer_norm",
            "img_pre_norm": "vision_layer_norm",
            "encode_norm": "output_layer_norm",
        },
    ),
    _rule(_GEO + r"points_(?:direct|pool|pos_enc)_project\." + _P),  # point prompts: not in the canonical model
    *_fusion_layer(_GEO + r"encode\." + _I, _GEO_D + r"layers.\g<i>"),
    # DETR encoder (image-text fusion)
    *_fusion_layer(r"detector\.transformer\.encoder\.layers\." + _I, r"detector_model.detr_encoder.layers.\g<i>"),
    # DETR decoder
    *_fused_mha(_DEC + r"layers\." + _I + r"\.self_attn", _DEC_D + r"layers.\g<i>.self_attn"),
    *_fused_mha(_DEC + r"layers\." + _I + r"\.ca_text", _DEC_D + r"layers.\g<i>.text_cross_attn"),
    *_fused_mha(_DEC + r"layers\." + _I + r"\.cross_attn", _DEC_D + r"layers.\g<i>.vision_cross_attn"),
    # post-norm layer: norm2 follows self-attention, catext_norm the text and norm1 the image cross-attention
    *[
        _rule(_DEC + r"layers\." + _I + rf"\.{a}\." + _P, _DEC_D + rf"layers.\g<i>.{b}.\g<p>")
        for a, b in {
            "norm1": "vision_cross_attn_layer_norm",
            "norm2": "self_attn_layer_norm",
            "catext_norm": "text_cross_attn_layer_norm",
            "norm3": "mlp_layer_norm",
        }.items()
    ],
    _rule(_DEC + r"layers\." + _I + r"\.linear(?P<n>[12])\." + _P, _DEC_D + r"layers.\g<i>.mlp.fc\g<n>.\g<p>"),
    *_renames(
        _DEC,
        _DEC_D,
        {
            "norm": "output_layer_norm",
            "query_embed": "query_embed",
            "reference_points": "reference_points",
            "presence_token": "presence_token",
            "presence_token_out_norm": "presence_layer_norm",
        },
    ),
    *_mlp_1based(_DEC + r"bbox_embed", _DEC_D + "box_head", 3),
    *_mlp_1based(_DEC + r"presence_token_head", _DEC_D + "presence_head", 3),
    *_mlp_1based(_DEC + r"ref_point_head", _DEC_D + "ref_point_head", 2),
    *_mlp_1based(_DEC + r"boxRPB_embed_x", _DEC_D + "box_rpb_embed_x", 2),
    *_mlp_1based(_DEC + r"boxRPB_embed_y", _DEC_D + "box_rpb_embed_y", 2),
    # segmentation head
    _rule(
        _SEG + r"pixel_decoder\.(?P<m>conv_layers|norms)\." + _I + r"\." + _P,
        _SEG_D + r"pixel_decoder.\g<m>.\g<i>.\g<p>",
    ),
    _rule(
        _SEG + r"mask_predictor\.mask_embed\.layers\." + _I + r"\." + _P, _SEG_D + r"mask_embedder.layers.\g<i>.\g<p>"
    ),
    *_fused_mha(_SEG + r"cross_attend_prompt", _SEG_D + "prompt_cross_attn"),
    *_renames(
        _SEG,
        _SEG_D,
        {
            "cross_attn_norm": "prompt_cross_attn_norm",
            "semantic_seg_head": "semantic_projection",
            "instance_seg_head": "instance_projection",
        },
    ),
    # dot-product scoring
    *_mlp_1based(_DOT + r"prompt_mlp", _DOT_D + "text_mlp", 2),
    *_renames(
        _DOT,
        _DOT_D,
        {"prompt_mlp.out_norm": "text_mlp_out_norm", "prompt_proj": "text_proj", "hs_proj": "query_proj"},
    ),
    # tracker: learned embeddings and small projections
    *[
        _rule(_TRK + _esc(a), _TRK_D + b)
        for a, b in {
            "maskmem_tpos_enc": "memory_temporal_positional_encoding",
            "no_mem_embed": "no_memory_embedding",
            "no_mem_pos_enc": "no_memory_positional_encoding",
            "no_obj_ptr": "no_object_pointer",
            "no_obj_embed_spatial": "occlusion_spatial_embedding_parameter",
        }.items()
    ],
    *_renames(
        _TRK,
        _TRK_D,
        {"mask_downsample": "mask_downsample", "obj_ptr_tpos_proj": "temporal_positional_encoding_projection_layer"},
    ),
    *_mlp_in_out(_TRK + r"obj_ptr_proj", _TRK_D + "object_pointer_proj", 3),
    # tracker: memory attention
    *_split_mha(
        _TRK + r"transformer\.encoder\.layers\." + _I + r"\.self_attn",
        _TRK_D + r"memory_attention.layers.\g<i>.self_attn",
    ),
    *_split_mha(
        _TRK + r"transformer\.encoder\.layers\." + _I + r"\.cross_attn_image",
        _TRK_D + r"memory_attention.layers.\g<i>.cross_attn_image",
    ),
    _rule(
        _TRK + r"transformer\.encoder\.layers\." + _I + r"\.(?P<m>linear[12])\." + _P,
        _TRK_D + r"memory_attention.layers.\g<i>.\g<m>.\g<p>",
    ),
    _rule(
        _TRK + r"transformer\.encoder\.layers\." + _I + r"\.norm(?P<n>[123])\." + _P,
        _TRK_D + r"memory_attention.layers.\g<i>.layer_norm\g<n>.\g<p>",
    ),
    _rule(_TRK + r"transformer\.encoder\.norm\." + _P, _TRK_D + r"memory_attention.layer_norm.\g<p>"),
    # tracker: memory encoder (mask downsampler is a Sequential of conv, LayerNorm2d, GELU ... 1x1 conv)
    *[
        _rule(
            _MEM + rf"mask_downsampler\.encoder\.{3 * k + j}\." + _P, _MEM_D + rf"mask_downsampler.layers.{k}.{m}.\g<p>"
        )
        for k in range(4)
        for j, m in ((0, "conv"), (1, "layer_norm"))
    ],
    _rule(_MEM + r"mask_downsampler\.encoder\.12\." + _P, _MEM_D + r"mask_downsampler.final_conv.\g<p>"),
    *_renames(_MEM, _MEM_D, {"pix_feat_proj": "feature_projection", "out_proj": "projection"}),
    _rule(_MEM + r"fuser\.layers\." + _I + r"\.gamma", _MEM_D + r"memory_fuser.layers.\g<i>.scale"),
    *[
        _rule(_MEM + r"fuser\.layers\." + _I + rf"\.{a}\." + _P, _MEM_D + rf"memory_fuser.layers.\g<i>.{b}.\g<p>")
        for a, b in {
            "dwconv": "depthwise_conv",
            "norm": "layer_norm",
            "pwconv1": "pointwise_conv1",
            "pwconv2": "pointwise_conv2",
        }.items()
    ],
    # tracker: prompt encoder
    _rule(
        _PE + r"pe_layer\.positional_encoding_gaussian_matrix",
        _PE_D + "shared_embedding.positional_embedding",
        _TRK_D + "shared_image_embedding.positional_embedding",
    ),
    _rule(
        _PE + r"point_embeddings\.(?P<row>\d+)\.weight", _PE_D + "point_embed.weight", transform=Transform.STACK_ROWS
    ),
    *_renames(
        _PE,
        _PE_D,
        {
            "not_a_point_embed": "not_a_point_embed",
            "no_mask_embed": "no_mask_embed",
            "mask_downscaling.0": "mask_embed.conv1",
            "mask_downscaling.1": "mask_embed.layer_norm1",
            "mask_downscaling.3": "mask_embed.conv2",
            "mask_downscaling.4": "mask_embed.layer_norm2",
            "mask_downscaling.6": "mask_embed.conv3",
        },
    ),
    # tracker: SAM mask decoder
    *_split_mha(_MDL + r"\.self_attn", _MDL_D + ".self_attn"),
    *_split_mha(_MDL + r"\.cross_attn_token_to_image", _MDL_D + ".cross_attn_token_to_image"),
    *_split_mha(_MDL + r"\.cross_attn_image_to_token", _MDL_D + ".cross_attn_image_to_token"),
    _rule(_MDL + r"\.norm(?P<n>[1-4])\." + _P, _MDL_D + r".layer_norm\g<n>.\g<p>"),
    _rule(_MDL + r"\.mlp\.lin1\." + _P, _MDL_D + r".mlp.proj_in.\g<p>"),
    _rule(_MDL + r"\.mlp\.lin2\." + _P, _MDL_D + r".mlp.proj_out.\g<p>"),
    *_split_mha(_MD + r"transformer\.final_attn_token_to_image", _MD_D + "transformer.final_attn_token_to_image"),
    *_renames(
        _MD,
        _MD_D,
        {
            "transformer.norm_final_attn": "transformer.layer_norm_final_attn",
            "iou_token": "iou_token",
            "mask_tokens": "mask_tokens",
            "obj_score_token": "obj_score_token",
            "output_upscaling.0": "upscale_conv1",
            "output_upscaling.1": "upscale_layer_norm",
            "output_upscaling.3": "upscale_conv2",
            "conv_s0": "conv_s0",
            "conv_s1": "conv_s1",
        },
    ),
    *[
        rule
        for j in range(4)
        for rule in _mlp_in_out(_MD + rf"output_hypernetworks_mlps\.{j}", _MD_D + f"output_hypernetworks_mlps.{j}", 3)
    ],
    *_mlp_in_out(_MD + r"iou_prediction_head", _MD_D + "iou_prediction_head", 3),
    *_mlp_in_out(_MD + r"pred_obj_score_head", _MD_D + "pred_obj_score_head", 3),
)


# --- the engine --------------------------------------------------------------------------------


@dataclass
class OfficialConversion:
    """Result of mapping an official state dict; unknown keys and conflicts are reported, never hidden."""

    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # known official keys without a canonical counterpart
    unknown: list[str] = field(default_factory=list)  # keys that no rule matches
    conflicts: list[str] = field(default_factory=list)  # canonical keys that two official keys would fill


def match_rule(key: str) -> tuple[Rule, re.Match[str]] | None:
    """The first rule that full-matches ``key`` (the table is written so that at most one does)."""
    for rule in RULES:
        m = rule.pattern.fullmatch(key)
        if m is not None:
            return rule, m
    return None


def _drop_cls_token(t: torch.Tensor) -> torch.Tensor:
    # Only a table with one extra row over a square grid carries a class token; a square one is already clean.
    n = t.shape[-2]
    if t.dim() == 3 and math.isqrt(n - 1) ** 2 == n - 1 and math.isqrt(n) ** 2 != n:
        return t[:, 1:, :]
    return t


def _apply(transform: Transform, t: torch.Tensor, n_targets: int) -> list[torch.Tensor]:
    if transform is Transform.SPLIT_QKV:
        if t.shape[0] % n_targets:
            raise ValueError(f"cannot split a tensor of shape {tuple(t.shape)} into {n_targets} equal parts")
        return [p.contiguous() for p in t.chunk(n_targets, dim=0)]
    if transform is Transform.DROP_CLS_TOKEN:
        out = _drop_cls_token(t)
    elif transform is Transform.TRANSPOSE:
        out = t.t()
    else:
        out = t
    return [out.contiguous()] * n_targets


def convert_official(sd: Mapping[str, torch.Tensor]) -> OfficialConversion:
    """Apply the rule table to every entry of an official state dict (meta tensors welcome)."""
    result = OfficialConversion()
    rows: dict[str, dict[int, torch.Tensor]] = {}
    for key, tensor in sd.items():
        found = match_rule(key)
        if found is None:
            result.unknown.append(key)
            continue
        rule, m = found
        targets = rule.target_keys(m)
        if not targets:
            result.dropped.append(key)
            continue
        if rule.transform is Transform.STACK_ROWS:
            rows.setdefault(targets[0], {})[int(m.group("row"))] = tensor
            continue
        for target, value in zip(targets, _apply(rule.transform, tensor, len(targets)), strict=True):
            if target in result.state_dict:
                result.conflicts.append(target)
            result.state_dict[target] = value
    for target, parts in rows.items():
        if sorted(parts) != list(range(len(parts))) or target in result.state_dict:
            result.conflicts.append(target)
            continue
        result.state_dict[target] = torch.cat([parts[i] for i in range(len(parts))], dim=0)
    return result


def convert_official_shapes(shapes: Mapping[str, tuple[int, ...]]) -> OfficialConversion:
    """Same mapping on shapes only: each shape becomes a meta tensor, so nothing is allocated."""
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    return convert_official(meta)
