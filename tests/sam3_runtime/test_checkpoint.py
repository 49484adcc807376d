"""Checkpoint handling: official -> canonical key mapping, key normalisation, resolving specs, loading, checking."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sam3_runtime.checkpoint import (
    CheckpointError,
    check_state_dict,
    convert_official_state_dict,
    load_state_dict,
    load_strict,
    normalize_hf_keys,
    read_key_list_tsv,
    resolve_checkpoint,
)
from sam3_runtime.model import write_random_checkpoint
from sam3_runtime.official_keys import RULES, convert_official_shapes
from tests.parity.hf_reference import HF_TSV, OFFICIAL_TSV


def _raw_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            key, shape, _ = line.split("\t")
            out[key] = tuple(int(d) for d in shape.split("x"))
    return out


# --- the official -> canonical table -----------------------------------------------------------


def test_official_key_list_maps_exactly_onto_the_transformers_key_list():
    official, hf = read_key_list_tsv(OFFICIAL_TSV), read_key_list_tsv(HF_TSV)
    assert len(_raw_shapes(OFFICIAL_TSV)) == 1465
    assert len(hf) == 1797
    assert check_state_dict(hf, official).ok
    assert official == hf  # same keys, same shapes


def test_rule_table_is_tight():
    raw = _raw_shapes(OFFICIAL_TSV)
    result = convert_official_shapes(raw)
    assert result.unknown == [] and result.conflicts == []
    # dropped on purpose: 32 precomputed RoPE tables and the geometry encoder's 6 point-prompt weights
    assert len(result.dropped) == 38
    assert all(k.endswith("attn.freqs_cis") or ".points_" in k for k in result.dropped)
    for key in raw:  # no key is claimed by two rules (order in the table must not matter)
        assert sum(r.pattern.fullmatch(key) is not None for r in RULES) == 1, key
    unused = [r.pattern.pattern for r in RULES if not any(r.pattern.fullmatch(k) for k in raw)]
    assert unused == []


_PICKED = [
    "detector.backbone.vision_backbone.trunk.pos_embed",
    "detector.backbone.vision_backbone.trunk.blocks.0.attn.qkv.weight",
    "detector.backbone.vision_backbone.trunk.blocks.0.attn.qkv.bias",
    "detector.backbone.vision_backbone.trunk.blocks.7.attn.proj.weight",
    "detector.backbone.vision_backbone.trunk.blocks.7.attn.freqs_cis",
    "detector.backbone.vision_backbone.convs.0.dconv_2x2_1.weight",
    "detector.backbone.vision_backbone.sam2_convs.1.dconv_2x2.bias",
    "detector.backbone.language_backbone.encoder.text_projection",
    "detector.backbone.language_backbone.encoder.transformer.resblocks.3.attn.in_proj_weight",
    "detector.backbone.language_backbone.encoder.transformer.resblocks.3.attn.in_proj_bias",
    "detector.geometry_encoder.encode.2.cross_attn_image.in_proj_weight",
    "detector.transformer.decoder.layers.5.norm1.weight",
    "detector.transformer.decoder.layers.5.norm2.weight",
    "detector.transformer.decoder.layers.5.catext_norm.weight",
    "detector.transformer.decoder.bbox_embed.layers.2.weight",
    "tracker.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    *[f"tracker.sam_prompt_encoder.point_embeddings.{i}.weight" for i in (2, 0, 3, 1)],  # any order
    "tracker.maskmem_backbone.mask_downsampler.encoder.3.weight",
    "tracker.maskmem_backbone.mask_downsampler.encoder.12.weight",
    "tracker.obj_ptr_proj.layers.1.weight",
    "tracker.sam_mask_decoder.output_upscaling.3.weight",
]


@pytest.fixture(scope="module")
def official_subset() -> dict[str, torch.Tensor]:
    """Real-shaped official tensors for a handful of layers, every value distinct."""
    shapes = _raw_shapes(OFFICIAL_TSV) if OFFICIAL_TSV.is_file() else {}
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(shapes[k], generator=g) for k in _PICKED if k in shapes}


def test_tensors_land_where_they_belong(official_subset):
    o, c = official_subset, convert_official_state_dict(official_subset)
    vit, txt = "detector_model.vision_encoder.backbone.", "detector_model.text_encoder."
    assert torch.equal(
        c[vit + "embeddings.position_embeddings"], o["detector.backbone.vision_backbone.trunk.pos_embed"][:, 1:]
    )
    for p in ("weight", "bias"):
        q, k, v = o[f"detector.backbone.vision_backbone.trunk.blocks.0.attn.qkv.{p}"].chunk(3)
        assert torch.equal(c[vit + f"layers.0.attention.q_proj.{p}"], q)
        assert torch.equal(c[vit + f"layers.0.attention.k_proj.{p}"], k)
        assert torch.equal(c[vit + f"layers.0.attention.v_proj.{p}"], v)
        fused = o[f"detector.backbone.language_backbone.encoder.transformer.resblocks.3.attn.in_proj_{p}"]
        assert torch.equal(c[txt + f"text_model.encoder.layers.3.self_attn.v_proj.{p}"], fused[2048:])
    geo = o["detector.geometry_encoder.encode.2.cross_attn_image.in_proj_weight"]
    assert torch.equal(c["detector_model.geometry_encoder.layers.2.cross_attn.k_proj.weight"], geo[256:512])
    assert torch.equal(
        c[txt + "text_projection.weight"], o["detector.backbone.language_backbone.encoder.text_projection"].T
    )
    assert c[txt + "text_projection.weight"].is_contiguous()
    # the decoder's post-norms: norm2 after self-attention, catext_norm after text, norm1 after image attention
    dec = "detector_model.detr_decoder.layers.5."
    for old, new in (("norm1", "vision_cross_attn_layer_norm"), ("norm2", "self_attn_layer_norm")):
        assert torch.equal(c[dec + f"{new}.weight"], o[f"detector.transformer.decoder.layers.5.{old}.weight"])
    assert torch.equal(
        c[dec + "text_cross_attn_layer_norm.weight"], o["detector.transformer.decoder.layers.5.catext_norm.weight"]
    )
    points = torch.cat([o[f"tracker.sam_prompt_encoder.point_embeddings.{i}.weight"] for i in range(4)])
    assert torch.equal(c["tracker_model.prompt_encoder.point_embed.weight"], points)
    gauss = o["tracker.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
    assert torch.equal(c["tracker_model.prompt_encoder.shared_embedding.positional_embedding"], gauss)
    assert torch.equal(c["tracker_model.shared_image_embedding.positional_embedding"], gauss)
    renamed = {
        "detector.backbone.vision_backbone.trunk.blocks.7.attn.proj.weight": vit + "layers.7.attention.o_proj.weight",
        "detector.backbone.vision_backbone.convs.0.dconv_2x2_1.weight": "detector_model.vision_encoder.neck.fpn_layers.0.scale_layers.2.weight",
        "detector.backbone.vision_backbone.sam2_convs.1.dconv_2x2.bias": "tracker_neck.fpn_layers.1.scale_layers.0.bias",
        "detector.transformer.decoder.bbox_embed.layers.2.weight": "detector_model.detr_decoder.box_head.layer3.weight",
        "tracker.maskmem_backbone.mask_downsampler.encoder.3.weight": "tracker_model.memory_encoder.mask_downsampler.layers.1.conv.weight",
        "tracker.maskmem_backbone.mask_downsampler.encoder.12.weight": "tracker_model.memory_encoder.mask_downsampler.final_conv.weight",
        "tracker.obj_ptr_proj.layers.1.weight": "tracker_model.object_pointer_proj.layers.0.weight",
        "tracker.sam_mask_decoder.output_upscaling.3.weight": "tracker_model.mask_decoder.upscale_conv2.weight",
    }
    for old, new in renamed.items():
        assert torch.equal(c[new], o[old]), old
    assert not any("freqs_cis" in k for k in c)


def test_unknown_official_keys_are_reported_not_dropped():
    sd = {
        "detector.transformer.decoder.presence_token.weight": torch.zeros(1, 8),
        "detector.mystery.weight": torch.ones(2),
    }
    with pytest.raises(CheckpointError, match=r"detector\.mystery\.weight"):
        convert_official_state_dict(sd)
    kept = convert_official_state_dict(sd, strict=False)
    assert set(kept) == {"detector_model.detr_decoder.presence_token.weight", "detector.mystery.weight"}
    report = check_state_dict({"detector_model.detr_decoder.presence_token.weight": (1, 8)}, kept)
    assert report.unexpected == ["detector.mystery.weight"] and not report.ok


def test_incomplete_point_embeddings_are_a_conflict():
    sd = {f"tracker.sam_prompt_encoder.point_embeddings.{i}.weight": torch.zeros(1, 4) for i in (0, 2)}
    with pytest.raises(CheckpointError, match="point_embed"):
        convert_official_state_dict(sd)


# --- transformers-format keys ------------------------------------------------------------------


def test_tracker_prefix_normalisation():
    w = torch.arange(3.0)
    saved = {
        "detector_model.text_projection.bias": w,
        "tracker_model.tracker_model.mask_downsample.bias": w + 1,
        "tracker_neck.fpn_layers.0.proj1.bias": w + 2,
    }
    out = normalize_hf_keys(saved)
    assert list(out) == [
        "detector_model.text_projection.bias",
        "tracker_model.mask_downsample.bias",
        "tracker_neck.fpn_layers.0.proj1.bias",
    ]
    assert torch.equal(out["tracker_model.mask_downsample.bias"], w + 1)
    published = {"tracker_model.mask_downsample.bias": w}
    assert normalize_hf_keys(published) == published
    with pytest.raises(CheckpointError, match="both tracker prefixes"):
        normalize_hf_keys({**saved, **published})


# --- key reports and strict loading ------------------------------------------------------------


def test_key_report_counts_on_perturbed_key_sets():
    expected = read_key_list_tsv(HF_TSV)
    actual = dict(expected)
    gone = [
        "tracker_neck.fpn_layers.3.proj2.bias",
        "detector_model.text_projection.weight",
        "tracker_model.no_object_pointer",
    ]
    for k in gone:
        del actual[k]
    actual["detector_model.extra.weight"] = (3,)
    actual["tracker_model.extra.bias"] = (3,)
    actual["detector_model.vision_encoder.backbone.embeddings.position_embeddings"] = (1, 577, 1024)
    report = check_state_dict(expected, actual)
    assert (len(report.mapped), len(report.missing), len(report.unexpected), len(report.wrong_shape)) == (1793, 3, 2, 1)
    assert set(report.missing) == set(gone) and not report.ok
    assert report.wrong_shape == [
        ("detector_model.vision_encoder.backbone.embeddings.position_embeddings", (1, 576, 1024), (1, 577, 1024))
    ]
    lines = report.summary().splitlines()
    assert lines[0] == "mapped: 1793" and len(lines) == 4
    assert "detector_model.extra.weight" in lines[2] and "expected 1x576x1024, got 1x577x1024" in lines[3]
    assert check_state_dict(expected, expected).ok


class _Tiny(nn.Module):
    """Three top-level children named like the full model's, so keys carry the canonical prefixes."""

    def __init__(self):
        super().__init__()
        self.detector_model = nn.Linear(4, 3)
        self.tracker_model = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
        self.tracker_neck = nn.Conv2d(2, 2, 1)


def test_load_strict_names_the_problem_keys_and_assigns_onto_meta():
    sd = {k: torch.randn(v.shape) for k, v in _Tiny().state_dict().items()}
    bad = {k: v for k, v in sd.items() if k != "tracker_model.1.bias"}
    bad["tracker_neck.weight"] = torch.zeros(2, 2, 3, 3)
    bad["detector_model.scale"] = torch.ones(1)
    with pytest.raises(CheckpointError) as err:
        load_strict(_Tiny(), bad)
    msg = str(err.value)
    assert "1 missing: tracker_model.1.bias" in msg and "1 unexpected: detector_model.scale" in msg
    assert "tracker_neck.weight (expected 2x2x1x1, got 2x2x3x3)" in msg
    with torch.device("meta"):
        model = _Tiny()
    report = load_strict(model, sd)  # meta model: tensors are assigned, not copied
    assert report.ok and len(report.mapped) == 8
    assert model.tracker_model[0].weight.data_ptr() == sd["tracker_model.0.weight"].data_ptr()
    copy = _Tiny()
    load_strict(copy, sd)
    assert torch.equal(copy.tracker_neck.weight, sd["tracker_neck.weight"])


# --- resolving and loading files ---------------------------------------------------------------


def _hf_dir(tmp: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = {k: torch.randn(v.shape) for k, v in _Tiny().state_dict().items()}
    saved = {("tracker_model." + k if k.startswith("tracker_model.") else k): v for k, v in sd.items()}
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(saved, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text("{}")
    (tmp / "tokenizer.json").write_text("{}")
    return tmp, sd


def test_hf_directory_round_trip(tmp_path):
    folder, sd = _hf_dir(tmp_path / "ckpt")
    resolved = resolve_checkpoint(str(folder))
    assert resolved.format == "hf_dir" and resolved.weights_path == folder / "model.safetensors"
    assert resolved.config_path == folder / "config.json" and resolved.tokenizer_path == folder / "tokenizer.json"
    assert resolved.model_id == str(folder)
    loaded = load_state_dict(resolved)
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)
    meta = load_state_dict(resolved, meta=True)
    assert all(v.is_meta and v.shape == sd[k].shape and v.dtype == sd[k].dtype for k, v in meta.items())
    model = _Tiny()
    load_strict(model, loaded)
    assert torch.equal(model.tracker_model[1].weight, sd["tracker_model.1.weight"])
    alone = resolve_checkpoint(folder / "model.safetensors")
    assert alone.format == "safetensors_file" and alone.config_path == folder / "config.json"


def test_official_pt_round_trip(tmp_path, official_subset):
    torch.save({"model": official_subset, "epoch": 3}, tmp_path / "sam3.pt")
    resolved = resolve_checkpoint(tmp_path)
    assert resolved.format == "official_pt" and resolved.weights_path == tmp_path / "sam3.pt"
    assert resolved.config_path is None and resolved.tokenizer_path is None
    loaded = load_state_dict(resolved)
    expected = convert_official_state_dict(official_subset)
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    meta = load_state_dict(resolve_checkpoint(tmp_path / "sam3.pt"), meta=True)
    assert {k: v.shape for k, v in meta.items()} == {k: v.shape for k, v in expected.items()}
    # official names in a .safetensors file are recognised by their prefixes and converted too
    save_file(official_subset, str(tmp_path / "official.safetensors"))
    assert load_state_dict(resolve_checkpoint(tmp_path / "official.safetensors")).keys() == expected.keys()


def test_local_spec_errors(tmp_path):
    for spec in ("./no/such/dir", str(tmp_path / "missing.pt"), "checkpoints/sam3.safetensors", "sam3"):
        with pytest.raises(CheckpointError, match="no such file or directory"):
            resolve_checkpoint(spec)
    (tmp_path / "weights.txt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"unsupported checkpoint file 'weights\.txt'"):
        resolve_checkpoint(tmp_path / "weights.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds neither model.safetensors nor a .pt"):
        resolve_checkpoint(tmp_path / "empty")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read .* as a safetensors_file checkpoint"):
        load_state_dict(resolve_checkpoint(tmp_path / "broken.safetensors"))
    torch.save({"step": 3}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not hold a state dict of tensors"):
        load_state_dict(resolve_checkpoint(tmp_path / "other.pt"))


# --- the hub -----------------------------------------------------------------------------------


@pytest.fixture
def online(monkeypatch):
    """Hub calls go out (whatever HF_HUB_OFFLINE says in this shell)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def _raised_within_guard(call, guard_s: float = 120.0) -> BaseException | None:
    """What ``call`` raised. A hub call that ignores its timeouts waits on a silent peer forever;
    the guard only turns such a hang into a failure, it does not time the call."""
    raised: list[BaseException | None] = [None]

    def run() -> None:
        try:
            call()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            raised[0] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(guard_s)
    assert not worker.is_alive(), f"the hub call still waits after {guard_s:.0f} s: a timeout is not applied"
    return raised[0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_facebook_sam3_fails_fast_without_internet(online, monkeypatch, tmp_path):
    from huggingface_hub import constants

    # never use a real token here: with network access and a licence this would start a 3 GB download
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    err = _raised_within_guard(lambda: resolve_checkpoint("facebook/sam3", cache_dir=tmp_path))
    assert isinstance(err, CheckpointError), err
    msg = str(err)
    # no network here: unreachable; with network and no licence accepted: gated
    assert (
        "the hub is unreachable" in msg and "pass a local directory or file, or set HF_HUB_OFFLINE=1" in msg
    ) or "facebook/sam3 is gated: accept the licence" in msg


def test_silent_hub_times_out(online, tmp_path):
    with socket.socket() as server:  # accepts connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        err = _raised_within_guard(lambda: resolve_checkpoint(
            "facebook/sam3",
            cache_dir=tmp_path,
            hub_timeout=0.5,
            endpoint=f"http://127.0.0.1:{server.getsockname()[1]}",
        ))
        assert isinstance(err, CheckpointError) and "the hub is unreachable" in str(err), err


class _FakeHub:
    """A local HTTP server that answers every request with one status (and X-Error-Code), recording headers."""

    def __init__(self, status: int, code: str | None = None):
        seen = self.authorization = []

        class Refuse(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                seen.append(self.headers.get("Authorization"))
                self.send_response(status)
                if code:
                    self.send_header("X-Error-Code", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> _FakeHub:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("spec", "status", "code", "message"),
    [
        (
            "facebook/sam3",
            403,
            "GatedRepo",
            "facebook/sam3 is gated: accept the licence on https://huggingface.co/facebook/sam3 and set HF_TOKEN",
        ),
        ("someone/nothing", 404, "RepoNotFound", "'someone/nothing' is neither a local path nor a hub model repo"),
        ("facebook/sam3@v9", 404, "RevisionNotFound", "revision 'v9' does not exist in facebook/sam3"),
        ("facebook/sam3", 401, None, "the hub refused access to facebook/sam3: set HF_TOKEN"),
        ("facebook/sam3", 503, None, "the hub is unreachable"),
    ],
)
def test_hub_refusals_become_one_clear_sentence(online, tmp_path, spec, status, code, message):
    with _FakeHub(status, code) as hub, pytest.raises(CheckpointError) as err:
        resolve_checkpoint(spec, cache_dir=tmp_path, hub_timeout=2, endpoint=hub.endpoint)
    assert str(err.value).startswith(message)
    assert str(err.value).count(". ") == 0  # one sentence


def test_token_reaches_the_hub(online, monkeypatch, tmp_path):
    with _FakeHub(403, "GatedRepo") as hub:
        for token, env in (("hf_explicit", "hf_env"), (None, "hf_env")):
            monkeypatch.setenv("HF_TOKEN", env)
            with pytest.raises(CheckpointError, match="gated"):
                resolve_checkpoint("facebook/sam3", token=token, cache_dir=tmp_path, endpoint=hub.endpoint)
    assert hub.authorization == ["Bearer hf_explicit", "Bearer hf_env"]


def _cache_snapshot(cache: Path, repo: str) -> Path:
    sha = "0123456789abcdef0123456789abcdef01234567"
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(sha)
    folder, _ = _hf_dir(root / "snapshots" / sha)
    return folder


def test_cached_snapshot_is_used_when_the_hub_is_unreachable(online, tmp_path):
    folder = _cache_snapshot(tmp_path, "facebook/sam3")
    resolved = resolve_checkpoint("facebook/sam3", cache_dir=tmp_path, endpoint=f"http://127.0.0.1:{_closed_port()}")
    assert resolved.format == "hf_dir" and resolved.weights_path.parent == folder
    assert resolved.model_id == "facebook/sam3"


def test_offline_mode_uses_the_cache_or_says_what_to_do(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set and facebook/sam3 is not in the hub cache"):
        resolve_checkpoint("facebook/sam3", cache_dir=tmp_path)
    folder = _cache_snapshot(tmp_path, "facebook/sam3")
    assert resolve_checkpoint("facebook/sam3", cache_dir=tmp_path).config_path == folder / "config.json"
    assert json.loads((folder / "config.json").read_text()) == {}


# --- random checkpoints ------------------------------------------------------------------------


def test_random_checkpoint_has_no_constant_tensor(tmp_path):
    state = load_file(str(write_random_checkpoint(tmp_path / "a", seed=4) / "model.safetensors"))
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    assert len(floats) == len(state) > 600
    assert [k for k, v in floats.items() if not v.any()] == []
    # nothing left at any constant init (norms at one, layer scales at 1e-6)
    assert [k for k, v in floats.items() if v.numel() > 1 and bool((v == v.flatten()[0]).all())] == []
    # norm weights stay near one, their biases near zero
    norm = "detector_model.vision_encoder.backbone.layers.0.layer_norm1."
    assert (state[norm + "weight"] - 1).abs().max() < 0.6 and state[norm + "bias"].abs().max() < 0.6
    assert state["tracker_model.no_object_pointer"].std() > 0.01


def test_random_checkpoint_follows_from_its_seed_alone(tmp_path):
    torch.manual_seed(123)
    first = load_file(str(write_random_checkpoint(tmp_path / "a", seed=4) / "model.safetensors"))
    after = torch.rand(1)
    torch.manual_seed(999)  # the caller's generator state must not matter, nor be changed
    again = load_file(str(write_random_checkpoint(tmp_path / "b", seed=4) / "model.safetensors"))
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after)
    other = load_file(str(write_random_checkpoint(tmp_path / "c", seed=5) / "model.safetensors"))
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    bias = "detector_model.detr_decoder.output_layer_norm.bias"  # zero at init: drawn from the seed
    assert not torch.equal(first[bias], other[bias])
