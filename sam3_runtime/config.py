"""Model configuration: typed, immutable sizes for every SAM 3 part.

Field names follow the transformers-format ``config.json`` so that a checkpoint's
config reads straight into these dataclasses (``Sam3Config.from_hf_dict``) and back
(``to_hf_dict``). Two presets: ``full`` (the published SAM 3) and ``tiny`` (tests and
the bundled demo checkpoint; small enough for CPU, yet it exercises every code path:
windowed blocks that need padding, global blocks, every FPN level).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ViTConfig:
    hidden_size: int = 1024
    intermediate_size: int = 4736
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 1008
    patch_size: int = 14
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    window_size: int = 24
    global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)
    pretrain_image_size: int = 336
    rope_theta: float = 10000.0
    layer_scale_init_value: float | None = None


@dataclass(frozen=True)
class VisionConfig:
    backbone_config: ViTConfig = field(default_factory=ViTConfig)
    fpn_hidden_size: int = 256
    backbone_feature_sizes: tuple[tuple[int, int], ...] = ((288, 288), (144, 144), (72, 72))
    scale_factors: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 49408
    hidden_size: int = 1024
    intermediate_size: int = 4096
    projection_dim: int = 512
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    max_position_embeddings: int = 32
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 1


@dataclass(frozen=True)
class GeometryEncoderConfig:
    hidden_size: int = 256
    num_layers: int = 3
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    hidden_act: str = "relu"
    layer_norm_eps: float = 1e-6
    roi_size: int = 7


@dataclass(frozen=True)
class DETREncoderConfig:
    hidden_size: int = 256
    num_layers: int = 6
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    hidden_act: str = "relu"
    layer_norm_eps: float = 1e-6


@dataclass(frozen=True)
class DETRDecoderConfig:
    hidden_size: int = 256
    num_layers: int = 6
    num_queries: int = 200
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    hidden_act: str = "relu"
    layer_norm_eps: float = 1e-6


@dataclass(frozen=True)
class MaskDecoderConfig:
    hidden_size: int = 256
    num_upsampling_stages: int = 3
    layer_norm_eps: float = 1e-6
    num_attention_heads: int = 8


@dataclass(frozen=True)
class DetectorConfig:
    vision_config: VisionConfig = field(default_factory=VisionConfig)
    text_config: TextConfig = field(default_factory=TextConfig)
    geometry_encoder_config: GeometryEncoderConfig = field(default_factory=GeometryEncoderConfig)
    detr_encoder_config: DETREncoderConfig = field(default_factory=DETREncoderConfig)
    detr_decoder_config: DETRDecoderConfig = field(default_factory=DETRDecoderConfig)
    mask_decoder_config: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)


@dataclass(frozen=True)
class TrackerPromptEncoderConfig:
    hidden_size: int = 256
    image_size: int = 1008
    patch_size: int = 14
    mask_input_channels: int = 16
    num_point_embeddings: int = 4
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    scale: int = 1


@dataclass(frozen=True)
class TrackerMaskDecoderConfig:
    hidden_size: int = 256
    hidden_act: str = "gelu"
    mlp_dim: int = 2048
    num_hidden_layers: int = 2
    num_attention_heads: int = 8
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    dynamic_multimask_via_stability: bool = True
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98


@dataclass(frozen=True)
class TrackerConfig:
    """The SAM2-style tracker. It reads the detector's ViT through its own FPN neck."""

    image_size: int = 1008
    prompt_encoder_config: TrackerPromptEncoderConfig = field(default_factory=TrackerPromptEncoderConfig)
    mask_decoder_config: TrackerMaskDecoderConfig = field(default_factory=TrackerMaskDecoderConfig)
    num_maskmem: int = 7
    max_cond_frame_num: int = 4
    max_object_pointers_in_encoder: int = 16
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    enable_occlusion_spatial_embedding: bool = True
    enable_temporal_pos_encoding_for_object_pointers: bool = True
    multimask_output_in_sam: bool = True
    multimask_output_for_tracking: bool = True
    multimask_min_pt_num: int = 0
    multimask_max_pt_num: int = 1
    memory_attention_hidden_size: int = 256
    memory_attention_num_layers: int = 4
    memory_attention_num_attention_heads: int = 1
    memory_attention_downsample_rate: int = 1
    memory_attention_feed_forward_hidden_size: int = 2048
    memory_attention_feed_forward_hidden_act: str = "relu"
    memory_attention_rope_feat_sizes: tuple[int, int] = (72, 72)
    memory_attention_rope_theta: float = 10000.0
    memory_encoder_hidden_size: int = 256
    memory_encoder_output_channels: int = 64
    mask_downsampler_embed_dim: int = 256
    mask_downsampler_kernel_size: int = 3
    mask_downsampler_stride: int = 2
    mask_downsampler_padding: int = 1
    mask_downsampler_total_stride: int = 16
    mask_downsampler_hidden_act: str = "gelu"
    memory_fuser_num_layers: int = 2
    memory_fuser_embed_dim: int = 256
    memory_fuser_intermediate_dim: int = 1024
    memory_fuser_kernel_size: int = 7
    memory_fuser_padding: int = 3
    memory_fuser_layer_scale_init_value: float = 1e-6
    memory_fuser_hidden_act: str = "gelu"


@dataclass(frozen=True)
class VideoConfig:
    """Heuristics of SAM 3's video inference (official defaults)."""

    low_res_mask_size: int = 288
    score_threshold_detection: float = 0.5
    det_nms_thresh: float = 0.1
    assoc_iou_thresh: float = 0.1
    trk_assoc_iou_thresh: float = 0.5
    new_det_thresh: float = 0.7
    recondition_on_trk_masks: bool = True
    hotstart_delay: int = 15
    hotstart_unmatch_thresh: int = 8
    hotstart_dup_thresh: int = 8
    suppress_unmatched_only_within_hotstart: bool = True
    init_trk_keep_alive: int = 30
    max_trk_keep_alive: int = 30
    min_trk_keep_alive: int = -1
    suppress_overlapping_based_on_recent_occlusion_threshold: float = 0.7
    decrease_trk_keep_alive_for_empty_masklets: bool = False
    fill_hole_area: int = 16
    max_num_objects: int = 10000
    recondition_every_nth_frame: int = 16
    high_conf_thresh: float = 0.8
    high_iou_thresh: float = 0.8


@dataclass(frozen=True)
class Sam3Config:
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    video: VideoConfig = field(default_factory=VideoConfig)

    @property
    def image_size(self) -> int:
        return self.detector.vision_config.backbone_config.image_size

    # -- presets -----------------------------------------------------------------
    @classmethod
    def full(cls) -> Sam3Config:
        return cls()

    @classmethod
    def tiny(cls) -> Sam3Config:
        """A few-MB model: 112 px input, 8x8 tokens, window 3 (padded to 9), 2 global blocks.

        The model width is 128: the tracker's memory attention reads 64-channel memories (fixed
        by the architecture) and splits each object pointer into width / 64 tokens, so 128 is
        the smallest width that runs the tracker end to end with pointers really split.
        """
        image_size = 112
        tokens = image_size // 14
        vit = ViTConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            image_size=image_size, window_size=3, global_attn_indexes=(1, 3), pretrain_image_size=56,
        )
        feature_sizes = ((tokens * 4,) * 2, (tokens * 2,) * 2, (tokens,) * 2)
        d = 128
        detector = DetectorConfig(
            vision_config=VisionConfig(backbone_config=vit, fpn_hidden_size=d, backbone_feature_sizes=feature_sizes),
            text_config=TextConfig(
                vocab_size=1024, hidden_size=32, intermediate_size=64, projection_dim=32,
                num_hidden_layers=2, num_attention_heads=2, bos_token_id=1022, eos_token_id=1023,
                pad_token_id=1023,
            ),
            geometry_encoder_config=GeometryEncoderConfig(hidden_size=d, num_layers=1, num_attention_heads=4, intermediate_size=128),
            detr_encoder_config=DETREncoderConfig(hidden_size=d, num_layers=2, num_attention_heads=4, intermediate_size=128),
            detr_decoder_config=DETRDecoderConfig(hidden_size=d, num_layers=2, num_queries=16, num_attention_heads=4, intermediate_size=128),
            mask_decoder_config=MaskDecoderConfig(hidden_size=d, num_attention_heads=4),
        )
        tracker = TrackerConfig(
            image_size=image_size,
            prompt_encoder_config=TrackerPromptEncoderConfig(hidden_size=d, image_size=image_size),
            mask_decoder_config=TrackerMaskDecoderConfig(hidden_size=d, mlp_dim=128, num_attention_heads=4, iou_head_hidden_dim=d),
            memory_attention_hidden_size=d,
            memory_attention_num_layers=2,
            memory_attention_feed_forward_hidden_size=128,
            memory_attention_rope_feat_sizes=(tokens, tokens),
            memory_encoder_hidden_size=d,
            memory_encoder_output_channels=64,
            mask_downsampler_embed_dim=d,
            memory_fuser_embed_dim=d,
            memory_fuser_intermediate_dim=128,
        )
        return cls(detector=detector, tracker=tracker)

    # -- transformers-format config.json -------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> Sam3Config:
        """Read a ``config.json`` of model_type ``sam3_video`` (or a bare ``sam3`` detector)."""
        model_type = d.get("model_type")
        if model_type == "sam3":
            d = {"detector_config": d}
        elif model_type not in ("sam3_video", None):
            raise ValueError(
                f"config.json has model_type {model_type!r}; expected 'sam3_video' (a SAM 3 checkpoint "
                "such as facebook/sam3)"
            )
        det = d.get("detector_config") or {}
        vis = det.get("vision_config") or {}
        trk = d.get("tracker_config") or {}
        detector = DetectorConfig(
            vision_config=_build(VisionConfig, vis, backbone_config=_build(ViTConfig, _vit_dict(vis.get("backbone_config") or {}))),
            text_config=_build(TextConfig, det.get("text_config") or {}),
            geometry_encoder_config=_build(GeometryEncoderConfig, det.get("geometry_encoder_config") or {}),
            detr_encoder_config=_build(DETREncoderConfig, det.get("detr_encoder_config") or {}),
            detr_decoder_config=_build(DETRDecoderConfig, det.get("detr_decoder_config") or {}),
            mask_decoder_config=_build(MaskDecoderConfig, det.get("mask_decoder_config") or {}),
        )
        trk_rope = (trk.get("rope_parameters") or {}).get("rope_theta")
        tracker = _build(
            TrackerConfig, trk,
            prompt_encoder_config=_build(TrackerPromptEncoderConfig, trk.get("prompt_encoder_config") or {}),
            mask_decoder_config=_build(TrackerMaskDecoderConfig, trk.get("mask_decoder_config") or {}),
            **({"memory_attention_rope_theta": float(trk_rope)} if trk_rope is not None else {}),
        )
        return cls(detector=detector, tracker=tracker, video=_build(VideoConfig, d))

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` content transformers writes for this model (model_type ``sam3_video``)."""
        det = self.detector
        vit = dataclasses.asdict(det.vision_config.backbone_config)
        vit["rope_parameters"] = {"rope_type": "axial", "rope_theta": vit.pop("rope_theta")}
        vit["global_attn_indexes"] = list(vit["global_attn_indexes"])
        vision = dataclasses.asdict(det.vision_config)
        vision["backbone_config"] = {"model_type": "sam3_vit_model", **vit}
        vision["backbone_feature_sizes"] = [list(s) for s in vision["backbone_feature_sizes"]]
        vision["scale_factors"] = list(vision["scale_factors"])
        detector = {
            "model_type": "sam3",
            "vision_config": {"model_type": "sam3_vision_model", **vision},
            "text_config": {"model_type": "clip_text_model", **dataclasses.asdict(det.text_config)},
            "geometry_encoder_config": {"model_type": "sam3_geometry_encoder", **dataclasses.asdict(det.geometry_encoder_config)},
            "detr_encoder_config": {"model_type": "sam3_detr_encoder", **dataclasses.asdict(det.detr_encoder_config)},
            "detr_decoder_config": {"model_type": "sam3_detr_decoder", **dataclasses.asdict(det.detr_decoder_config)},
            "mask_decoder_config": {"model_type": "sam3_mask_decoder", **dataclasses.asdict(det.mask_decoder_config)},
        }
        trk = dataclasses.asdict(self.tracker)
        trk["rope_parameters"] = {"rope_type": "axial", "rope_theta": trk.pop("memory_attention_rope_theta")}
        trk["memory_attention_rope_feat_sizes"] = list(trk["memory_attention_rope_feat_sizes"])
        trk["prompt_encoder_config"] = {"model_type": "sam3_tracker_video_prompt_encoder", **trk["prompt_encoder_config"]}
        trk["mask_decoder_config"] = {"model_type": "sam3_tracker_video_mask_decoder", **trk["mask_decoder_config"]}
        trk["vision_config"] = detector["vision_config"]
        tracker = {"model_type": "sam3_tracker_video", **trk}
        return {
            "model_type": "sam3_video",
            "architectures": ["Sam3VideoModel"],
            "detector_config": detector,
            "tracker_config": tracker,
            **dataclasses.asdict(self.video),
        }


def _vit_dict(d: dict[str, Any]) -> dict[str, Any]:
    d = dict(d)
    rope = d.get("rope_parameters") or {}
    if "rope_theta" in rope:
        d["rope_theta"] = rope["rope_theta"]
    return d


def _build(cls, d: dict[str, Any], **overrides: Any):
    """Instantiate ``cls`` from the keys of ``d`` it knows; lists become tuples (frozen, hashable)."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: _freeze(v) for k, v in d.items() if k in names and not isinstance(v, dict)}
    kwargs.update(overrides)
    return cls(**kwargs)


def _freeze(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v
