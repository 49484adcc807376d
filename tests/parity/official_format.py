"""Canonical (transformers-format) weights -> an official-format ``sam3.pt`` state dict.

The inverse of the runtime's official -> canonical rule table, written independently of it from
the published official key list (``tests/data/sam3_official_video_state_dict.tsv``) so that a
mistake in the runtime's table does not cancel out: q/k/v projections are fused back into
``qkv`` / ``in_proj_*``, the ViT position table gets its class-token row back, CLIP's text
projection is stored ``(in, out)``, the four point embeddings become four one-row tables, the
1-based MLPs and Sequential indices are renumbered, and the tensors the runtime drops on
purpose (precomputed RoPE tables, the geometry encoder's point projections) are added with
random values, so that loading must really ignore them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from sam3_runtime.config import Sam3Config

_P = r"(?P<p>weight|bias)"
_I = r"(?P<i>\d+)"
_QKV = r"(?P<qkv>[qkv])_proj\." + _P  # one of the three projections that the official format fuses

VIT, OFF_VIT = r"detector_model\.vision_encoder\.backbone\.", "detector.backbone.vision_backbone.trunk."
TXT, OFF_TXT = r"detector_model\.text_encoder\.", "detector.backbone.language_backbone.encoder."
GEO, OFF_GEO = r"detector_model\.geometry_encoder\.", "detector.geometry_encoder."
DEC, OFF_DEC = r"detector_model\.detr_decoder\.", "detector.transformer.decoder."
SEG, OFF_SEG = r"detector_model\.mask_decoder\.", "detector.segmentation_head."
DOT, OFF_DOT = r"detector_model\.dot_product_scoring\.", "detector.dot_prod_scoring."
TRK, OFF_TRK = r"tracker_model\.", "tracker."


@dataclass(frozen=True)
class InverseRule:
    pattern: re.Pattern[str]  # full-matches canonical keys
    target: Callable[[re.Match[str]], str]  # the official key
    kind: str = "copy"  # copy | fuse (q/k/v rows, in that order) | transpose | cls_row | point_rows


def _r(pattern: str, target: str | Callable[[re.Match[str]], str], kind: str = "copy") -> InverseRule:
    fn = target if callable(target) else (lambda m, t=target: t.format(**m.groupdict()))
    return InverseRule(re.compile(pattern), fn, kind)


def _fused_attention(src: str, dst: str, fused: str = "in_proj_{p}", out: str = "o_proj") -> list[InverseRule]:
    return [_r(src + r"\." + _QKV, dst + "." + fused, "fuse"),
            _r(src + rf"\.{out}\." + _P, dst + ".out_proj.{p}")]


def _separate_attention(src: str, dst: str) -> list[InverseRule]:
    return [_r(src + r"\." + _QKV, dst + ".{qkv}_proj.{p}"), _r(src + r"\.o_proj\." + _P, dst + ".out_proj.{p}")]


def _fusion_layer(src: str, dst: str) -> list[InverseRule]:
    """Geometry and DETR encoder layers: pre-norm self-attention, image cross-attention, FFN."""
    return [
        *_fused_attention(src + r"\.self_attn", dst + ".self_attn"),
        *_fused_attention(src + r"\.cross_attn", dst + ".cross_attn_image"),
        _r(src + r"\.mlp\.fc(?P<n>[12])\." + _P, dst + ".linear{n}.{p}"),
        _r(src + r"\.layer_norm(?P<n>[123])\." + _P, dst + ".norm{n}.{p}"),
    ]


def _one_based_mlp(src: str, dst: str) -> InverseRule:
    return _r(src + r"\.layer(?P<k>\d+)\." + _P, lambda m: f"{dst}.layers.{int(m['k']) - 1}.{m['p']}")


def _in_out_mlp(src: str, dst: str, num_layers: int = 3) -> list[InverseRule]:
    return [
        _r(src + r"\.proj_in\." + _P, dst + ".layers.0.{p}"),
        _r(src + r"\.layers\.(?P<k>\d+)\." + _P,
           lambda m: f"{dst.format(**m.groupdict())}.layers.{int(m['k']) + 1}.{m['p']}"),
        _r(src + r"\.proj_out\." + _P, dst + f".layers.{num_layers - 1}.{{p}}"),
    ]


def _renames(src: str, dst: str, names: Mapping[str, str]) -> list[InverseRule]:
    return [_r(src + re.escape(a) + r"\." + _P, dst + b + ".{p}") for a, b in names.items()]


def _fpn(src: str, dst: str, scale_factors: tuple[float, ...]) -> list[InverseRule]:
    def deconv(m: re.Match[str]) -> str:
        # a 4x level is deconv, GELU, deconv (official dconv_2x2_0 / _1); a 2x level one dconv_2x2
        level, index = int(m["i"]), int(m["j"])
        name = "dconv_2x2" if scale_factors[level] == 2.0 else f"dconv_2x2_{index // 2}"
        return f"{dst}.{level}.{name}.{m['p']}"

    return [
        _r(src + r"\." + _I + r"\.scale_layers\.(?P<j>\d+)\." + _P, deconv),
        _r(src + r"\." + _I + r"\.proj1\." + _P, dst + ".{i}.conv_1x1.{p}"),
        _r(src + r"\." + _I + r"\.proj2\." + _P, dst + ".{i}.conv_3x3.{p}"),
    ]


def inverse_rules(config: Sam3Config) -> list[InverseRule]:
    scales = config.detector.vision_config.scale_factors
    layer = r"layers\." + _I
    return [
        # ViT
        _r(VIT + r"embeddings\.position_embeddings", OFF_VIT + "pos_embed", "cls_row"),
        _r(VIT + r"embeddings\.patch_embeddings\.projection\." + _P, OFF_VIT + "patch_embed.proj.{p}"),
        _r(VIT + r"layer_norm\." + _P, OFF_VIT + "ln_pre.{p}"),
        _r(VIT + layer + r"\.layer_norm(?P<n>[12])\." + _P, OFF_VIT + "blocks.{i}.norm{n}.{p}"),
        _r(VIT + layer + r"\.attention\." + _QKV, OFF_VIT + "blocks.{i}.attn.qkv.{p}", "fuse"),
        _r(VIT + layer + r"\.attention\.o_proj\." + _P, OFF_VIT + "blocks.{i}.attn.proj.{p}"),
        _r(VIT + layer + r"\.mlp\.fc(?P<n>[12])\." + _P, OFF_VIT + "blocks.{i}.mlp.fc{n}.{p}"),
        *_fpn(r"detector_model\.vision_encoder\.neck\.fpn_layers", "detector.backbone.vision_backbone.convs", scales),
        *_fpn(r"tracker_neck\.fpn_layers", "detector.backbone.vision_backbone.sam2_convs", scales),
        # CLIP text encoder and the resizer
        _r(TXT + r"text_model\.embeddings\.token_embedding\.weight", OFF_TXT + "token_embedding.weight"),
        _r(TXT + r"text_model\.embeddings\.position_embedding\.weight", OFF_TXT + "positional_embedding"),
        _r(TXT + r"text_model\.final_layer_norm\." + _P, OFF_TXT + "ln_final.{p}"),
        _r(TXT + r"text_projection\.weight", OFF_TXT + "text_projection", "transpose"),
        *_fused_attention(TXT + r"text_model\.encoder\." + layer + r"\.self_attn",
                          OFF_TXT + "transformer.resblocks.{i}.attn", out="out_proj"),
        _r(TXT + r"text_model\.encoder\." + layer + r"\.layer_norm(?P<n>[12])\." + _P,
           OFF_TXT + "transformer.resblocks.{i}.ln_{n}.{p}"),
        _r(TXT + r"text_model\.encoder\." + layer + r"\.mlp\.fc1\." + _P, OFF_TXT + "transformer.resblocks.{i}.mlp.c_fc.{p}"),
        _r(TXT + r"text_model\.encoder\." + layer + r"\.mlp\.fc2\." + _P,
           OFF_TXT + "transformer.resblocks.{i}.mlp.c_proj.{p}"),
        _r(r"detector_model\.text_projection\." + _P, "detector.backbone.language_backbone.resizer.{p}"),
        # geometry encoder
        *_renames(GEO, OFF_GEO, {n: n for n in ("label_embed", "cls_embed", "boxes_direct_project", "boxes_pool_project",
                                                "boxes_pos_enc_project", "final_proj")}),
        *_renames(GEO, OFF_GEO, {"prompt_layer_norm": "norm", "vision_layer_norm": "img_pre_norm",
                                 "output_layer_norm": "encode_norm"}),
        *_fusion_layer(GEO + layer, OFF_GEO + "encode.{i}"),
        # DETR encoder and decoder
        *_fusion_layer(r"detector_model\.detr_encoder\." + layer, "detector.transformer.encoder.layers.{i}"),
        *_fused_attention(DEC + layer + r"\.self_attn", OFF_DEC + "layers.{i}.self_attn"),
        *_fused_attention(DEC + layer + r"\.text_cross_attn", OFF_DEC + "layers.{i}.ca_text"),
        *_fused_attention(DEC + layer + r"\.vision_cross_attn", OFF_DEC + "layers.{i}.cross_attn"),
        *[_r(DEC + layer + rf"\.{a}\." + _P, OFF_DEC + "layers.{i}." + b + ".{p}")
          for a, b in (("self_attn_layer_norm", "norm2"), ("text_cross_attn_layer_norm", "catext_norm"),
                       ("vision_cross_attn_layer_norm", "norm1"), ("mlp_layer_norm", "norm3"))],
        _r(DEC + layer + r"\.mlp\.fc(?P<n>[12])\." + _P, OFF_DEC + "layers.{i}.linear{n}.{p}"),
        *_renames(DEC, OFF_DEC, {"output_layer_norm": "norm", "query_embed": "query_embed",
                                 "reference_points": "reference_points", "presence_token": "presence_token",
                                 "presence_layer_norm": "presence_token_out_norm"}),
        _one_based_mlp(DEC + "box_head", OFF_DEC + "bbox_embed"),
        _one_based_mlp(DEC + "presence_head", OFF_DEC + "presence_token_head"),
        _one_based_mlp(DEC + "ref_point_head", OFF_DEC + "ref_point_head"),
        _one_based_mlp(DEC + "box_rpb_embed_x", OFF_DEC + "boxRPB_embed_x"),
        _one_based_mlp(DEC + "box_rpb_embed_y", OFF_DEC + "boxRPB_embed_y"),
        # segmentation head and dot-product scoring
        _r(SEG + r"pixel_decoder\.(?P<m>conv_layers|norms)\." + _I + r"\." + _P, OFF_SEG + "pixel_decoder.{m}.{i}.{p}"),
        _r(SEG + r"mask_embedder\." + layer + r"\." + _P, OFF_SEG + "mask_predictor.mask_embed.layers.{i}.{p}"),
        *_fused_attention(SEG + "prompt_cross_attn", OFF_SEG + "cross_attend_prompt"),
        *_renames(SEG, OFF_SEG, {"prompt_cross_attn_norm": "cross_attn_norm", "semantic_projection": "semantic_seg_head",
                                 "instance_projection": "instance_seg_head"}),
        _one_based_mlp(DOT + "text_mlp", OFF_DOT + "prompt_mlp"),
        *_renames(DOT, OFF_DOT, {"text_mlp_out_norm": "prompt_mlp.out_norm", "text_proj": "prompt_proj",
                                 "query_proj": "hs_proj"}),
        # tracker: embeddings and small projections
        *[_r(TRK + a, OFF_TRK + b) for a, b in (
            ("memory_temporal_positional_encoding", "maskmem_tpos_enc"), ("no_memory_embedding", "no_mem_embed"),
            ("no_memory_positional_encoding", "no_mem_pos_enc"), ("no_object_pointer", "no_obj_ptr"),
            ("occlusion_spatial_embedding_parameter", "no_obj_embed_spatial"))],
        *_renames(TRK, OFF_TRK, {"mask_downsample": "mask_downsample",
                                 "temporal_positional_encoding_projection_layer": "obj_ptr_tpos_proj"}),
        *_in_out_mlp(TRK + "object_pointer_proj", OFF_TRK + "obj_ptr_proj"),
        # tracker: memory attention
        *_separate_attention(TRK + r"memory_attention\." + layer + r"\.self_attn",
                             OFF_TRK + "transformer.encoder.layers.{i}.self_attn"),
        *_separate_attention(TRK + r"memory_attention\." + layer + r"\.cross_attn_image",
                             OFF_TRK + "transformer.encoder.layers.{i}.cross_attn_image"),
        _r(TRK + r"memory_attention\." + layer + r"\.linear(?P<n>[12])\." + _P,
           OFF_TRK + "transformer.encoder.layers.{i}.linear{n}.{p}"),
        _r(TRK + r"memory_attention\." + layer + r"\.layer_norm(?P<n>[123])\." + _P,
           OFF_TRK + "transformer.encoder.layers.{i}.norm{n}.{p}"),
        _r(TRK + r"memory_attention\.layer_norm\." + _P, OFF_TRK + "transformer.encoder.norm.{p}"),
        # tracker: memory encoder; the mask downsampler is a Sequential (conv, norm, GELU) x 4 + a 1x1 conv
        _r(TRK + r"memory_encoder\.mask_downsampler\." + layer + r"\.(?P<m>conv|layer_norm)\." + _P,
           lambda m: (f"tracker.maskmem_backbone.mask_downsampler.encoder."
                      f"{3 * int(m['i']) + (m['m'] == 'layer_norm')}.{m['p']}")),
        _r(TRK + r"memory_encoder\.mask_downsampler\.final_conv\." + _P,
           "tracker.maskmem_backbone.mask_downsampler.encoder.12.{p}"),
        *_renames(TRK + r"memory_encoder\.", "tracker.maskmem_backbone.",
                  {"feature_projection": "pix_feat_proj", "projection": "out_proj"}),
        _r(TRK + r"memory_encoder\.memory_fuser\." + layer + r"\.scale", "tracker.maskmem_backbone.fuser.layers.{i}.gamma"),
        *[_r(TRK + r"memory_encoder\.memory_fuser\." + layer + rf"\.{a}\." + _P,
             "tracker.maskmem_backbone.fuser.layers.{i}." + b + ".{p}")
          for a, b in (("depthwise_conv", "dwconv"), ("layer_norm", "norm"), ("pointwise_conv1", "pwconv1"),
                       ("pointwise_conv2", "pwconv2"))],
        # tracker: prompt encoder (its Fourier matrix also serves as the image positional encoding)
        _r(TRK + r"prompt_encoder\.shared_embedding\.positional_embedding",
           "tracker.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
        _r(TRK + r"shared_image_embedding\.positional_embedding",
           "tracker.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "same_as_prompt_encoder"),
        _r(TRK + r"prompt_encoder\.point_embed\.weight", "tracker.sam_prompt_encoder.point_embeddings", "point_rows"),
        *_renames(TRK + r"prompt_encoder\.", "tracker.sam_prompt_encoder.", {
            "not_a_point_embed": "not_a_point_embed", "no_mask_embed": "no_mask_embed",
            "mask_embed.conv1": "mask_downscaling.0", "mask_embed.layer_norm1": "mask_downscaling.1",
            "mask_embed.conv2": "mask_downscaling.3", "mask_embed.layer_norm2": "mask_downscaling.4",
            "mask_embed.conv3": "mask_downscaling.6"}),
        # tracker: SAM mask decoder
        *[rule for name in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token")
          for rule in _separate_attention(TRK + r"mask_decoder\.transformer\." + layer + rf"\.{name}",
                                          "tracker.sam_mask_decoder.transformer.layers.{i}." + name)],
        _r(TRK + r"mask_decoder\.transformer\." + layer + r"\.layer_norm(?P<n>[1-4])\." + _P,
           "tracker.sam_mask_decoder.transformer.layers.{i}.norm{n}.{p}"),
        _r(TRK + r"mask_decoder\.transformer\." + layer + r"\.mlp\.proj_in\." + _P,
           "tracker.sam_mask_decoder.transformer.layers.{i}.mlp.lin1.{p}"),
        _r(TRK + r"mask_decoder\.transformer\." + layer + r"\.mlp\.proj_out\." + _P,
           "tracker.sam_mask_decoder.transformer.layers.{i}.mlp.lin2.{p}"),
        *_separate_attention(TRK + r"mask_decoder\.transformer\.final_attn_token_to_image",
                             "tracker.sam_mask_decoder.transformer.final_attn_token_to_image"),
        *_renames(TRK + r"mask_decoder\.", "tracker.sam_mask_decoder.", {
            "transformer.layer_norm_final_attn": "transformer.norm_final_attn", "iou_token": "iou_token",
            "mask_tokens": "mask_tokens", "obj_score_token": "obj_score_token", "upscale_conv1": "output_upscaling.0",
            "upscale_layer_norm": "output_upscaling.1", "upscale_conv2": "output_upscaling.3", "conv_s0": "conv_s0",
            "conv_s1": "conv_s1"}),
        *_in_out_mlp(TRK + r"mask_decoder\.output_hypernetworks_mlps\." + _I,
                     "tracker.sam_mask_decoder.output_hypernetworks_mlps.{i}"),
        *_in_out_mlp(TRK + r"mask_decoder\.iou_prediction_head", "tracker.sam_mask_decoder.iou_prediction_head"),
        *_in_out_mlp(TRK + r"mask_decoder\.pred_obj_score_head", "tracker.sam_mask_decoder.pred_obj_score_head"),
    ]


def _random_like(shape: tuple[int, ...], like: torch.Tensor, gen: torch.Generator, dtype=None) -> torch.Tensor:
    dtype = dtype or like.dtype
    if like.is_meta:
        return torch.empty(shape, dtype=dtype, device="meta")
    if dtype.is_complex:
        return torch.complex(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)).to(dtype)
    return (0.1 * torch.randn(shape, generator=gen)).to(dtype)


def _dropped_extras(config: Sam3Config, like: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Official tensors the canonical model has no place for: the runtime must drop them."""
    vit = config.detector.vision_config.backbone_config
    head_dim = vit.hidden_size // vit.num_attention_heads
    grid = vit.image_size // vit.patch_size
    out = {}
    for i in range(vit.num_hidden_layers):
        tokens = grid * grid if i in vit.global_attn_indexes else vit.window_size * vit.window_size
        out[f"{OFF_VIT}blocks.{i}.attn.freqs_cis"] = _random_like((tokens, head_dim // 2), like, gen, torch.complex64)
    d = config.detector.geometry_encoder_config.hidden_size
    for name, fan_in in (("points_direct_project", 2), ("points_pool_project", d), ("points_pos_enc_project", d)):
        out[f"{OFF_GEO}{name}.weight"] = _random_like((d, fan_in), like, gen)
        out[f"{OFF_GEO}{name}.bias"] = _random_like((d,), like, gen)
    return out


def to_official(canonical: Mapping[str, torch.Tensor], config: Sam3Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """The official-format state dict holding ``canonical``'s weights (meta tensors give a key/shape listing).

    Raises if a canonical key matches no rule or more than one, so the table stays exact.
    """
    rules = inverse_rules(config)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in canonical.items():
        if key.startswith("tracker_model.tracker_model."):  # transformers' save_pretrained naming
            key = key.removeprefix("tracker_model.")
        found = [(r, m) for r in rules if (m := r.pattern.fullmatch(key)) is not None]
        if len(found) != 1:
            raise KeyError(f"{key}: {len(found)} inverse rules match")
        rule, m = found[0]
        target = rule.target(m)
        if rule.kind == "fuse":
            fused.setdefault(target, {})[m["qkv"]] = tensor
        elif rule.kind == "transpose":
            out[target] = tensor.t().contiguous()
        elif rule.kind == "cls_row":
            out[target] = torch.cat([_random_like((1, 1, tensor.shape[-1]), tensor, gen), tensor], dim=1)
        elif rule.kind == "point_rows":
            for row in range(tensor.shape[0]):
                out[f"{target}.{row}.weight"] = tensor[row : row + 1].clone()
        elif rule.kind == "same_as_prompt_encoder":
            # one official tensor fills both canonical keys; weights that differ cannot be written
            other = canonical.get(key.replace("shared_image_embedding", "prompt_encoder.shared_embedding"))
            if other is not None and not tensor.is_meta and not torch.equal(other, tensor):
                raise ValueError(f"{key} differs from the prompt encoder's Fourier matrix: the official format has one")
        else:
            out[target] = tensor.clone() if not tensor.is_meta else tensor
    for target, parts in fused.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise KeyError(f"{target}: q/k/v incomplete ({sorted(parts)})")
        out[target] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    like = next(iter(canonical.values()))
    out.update(_dropped_extras(config, like, gen))
    return out
