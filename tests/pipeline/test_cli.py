"""The command line: results on good input, one clear line and exit code 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from pipeline.cli import main
from sam3_runtime.masks import decode_rle
from sam3_runtime.model import write_random_checkpoint

SAMPLE = "configs/samples/street.png"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny"))


def test_segment_writes_json_and_overlay(checkpoint, tmp_path, capsys):
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    code = main(["segment", SAMPLE, "--checkpoint", checkpoint, "--prompt", "car", "--prompt", "tree",
                 "--threshold", "0.2", "--json", str(out_json), "--overlay", str(out_png)])
    assert code == 0
    payload = json.loads(out_json.read_text())
    [image] = payload["images"]
    assert (image["width"], image["height"]) == (320, 240)
    assert {i["prompt"] for i in image["instances"]} == {"car", "tree"}
    for inst in image["instances"]:
        assert 0.2 < inst["score"] <= inst["presence"]
        x0, y0, x1, y1 = inst["box_xyxy"]
        assert 0 <= x0 <= x1 <= 320 and 0 <= y0 <= y1 <= 240
        assert decode_rle([inst["mask"]])[0].shape == (240, 320)
    overlay = np.asarray(Image.open(out_png))
    assert overlay.shape == (240, 320, 3)
    assert not np.array_equal(overlay, np.asarray(Image.open(SAMPLE).convert("RGB")))


def test_segment_json_to_stdout_with_boxes(checkpoint, capsys):
    code = main(["segment", SAMPLE, "--checkpoint", checkpoint, "--box", "30,160,100,215",
                 "--box", "230,160,300,215:neg", "--threshold", "0", "--json", "-"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    instances = payload["images"][0]["instances"]
    assert instances and all(i["prompt"] == "visual" for i in instances)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["segment", "missing.png", "--prompt", "car"], "no such image file"),
        (["segment", "pyproject.toml", "--prompt", "car"], "not a readable image"),
        (["segment", SAMPLE, "--prompt", " "], "empty text prompt"),
        (["segment", SAMPLE], "nothing to segment"),
        (["segment", SAMPLE, "--box", "1,2,3"], "four numbers"),
        (["segment", SAMPLE, "--box", "0,0,400,100"], "outside the 320x240 image"),
        (["segment", SAMPLE, "--prompt", "car", "--device", "tpu"], "unknown device 'tpu'"),
        (["segment", SAMPLE, "--prompt", "car", "--dtype", "int8"], "unknown dtype 'int8'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(checkpoint, args, message, capsys):
    code = main([*args, "--checkpoint", checkpoint])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_checkpoint_is_exit_2(capsys):
    code = main(["segment", SAMPLE, "--prompt", "car", "--checkpoint", "/nonexistent/sam3"])
    assert code == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_checkpoint_with_missing_and_extra_keys_names_them(checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (broken / name).write_bytes((Path(checkpoint) / name).read_bytes())
    state = load_file(f"{checkpoint}/model.safetensors")
    state.pop("detector_model.detr_decoder.presence_token.weight")
    state["detector_model.extra.weight"] = state["detector_model.text_projection.bias"].clone()
    save_file(state, str(broken / "model.safetensors"))
    code = main(["segment", SAMPLE, "--prompt", "car", "--checkpoint", str(broken)])
    err = capsys.readouterr().err
    assert code == 2
    assert "detector_model.detr_decoder.presence_token.weight" in err and "detector_model.extra.weight" in err


def test_checkpoint_check_on_reference_key_lists(capsys):
    for tsv in ("tests/data/sam3_hf_video_state_dict.tsv", "tests/data/sam3_official_video_state_dict.tsv"):
        assert main(["checkpoint", "check", tsv]) == 0
        out = capsys.readouterr().out
        assert "1797" in out


def test_checkpoint_check_uses_the_checkpoint_config_and_flags_broken_files(checkpoint, tmp_path, capsys):
    assert main(["checkpoint", "check", checkpoint]) == 0
    assert "missing: 0" in capsys.readouterr().out
    # a tiny state dict under a full-size config: every tensor has the wrong shape
    (tmp_path / "model.safetensors").write_bytes((Path(checkpoint) / "model.safetensors").read_bytes())
    assert main(["checkpoint", "check", str(tmp_path / "model.safetensors")]) == 2
    assert "wrong shape: 6" in capsys.readouterr().out


def test_cli_process_exit_code_and_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "segment", "nope.jpg", "--prompt", "car"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no such image file" in proc.stderr and "Traceback" not in proc.stderr


def test_parse_box_reads_pixels_and_the_polarity():
    from pipeline.commands.args import UsageError, parse_box

    assert parse_box("1,2,30.5,40") == ((1.0, 2.0, 30.5, 40.0), True)
    assert parse_box("1,2,30,40:neg") == ((1.0, 2.0, 30.0, 40.0), False)
    assert parse_box("1,2,30,40:pos") == ((1.0, 2.0, 30.0, 40.0), True)
    for text, message in [("5,2,5,40", "x1 must exceed x0"), ("1,9,30,9", "x1 must exceed x0"),
                          ("1,2,30", "four numbers"), ("1,2,a,4", "four numbers"), ("1,2,30,40:no", "':neg' or ':pos'")]:
        with pytest.raises(UsageError, match=message):
            parse_box(text)
    with pytest.raises(UsageError, match="without a suffix"):
        parse_box("1,2,30,40:neg", allow_negative=False)


def test_every_command_is_registered_and_none_imports_the_cli():
    """cli.py builds the parser from pipeline/commands; a command importing the CLI back (even inside
    a function) would be an import cycle."""
    import ast

    from pipeline import cli

    root = Path(__file__).resolve().parents[2] / "pipeline"
    for path in root.rglob("*.py"):
        if path.name == "cli.py" and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "pipeline.cli" or n.startswith("pipeline.cli.") for n in names), path
    commands = {p.stem for p in (root / "commands").glob("*.py")} - {"__init__", "args"}
    assert {c.__name__.rsplit(".", 1)[-1] for c in cli.COMMANDS} == commands
    parser = cli.build_parser()
    for argv in (["run", "j.yaml"], ["segment", "a.png"], ["track", "v.mp4"], ["samples"],
                 ["checkpoint", "check", "p"], ["checkpoint", "init-random", "d"]):
        assert callable(parser.parse_args(argv).handler), argv
