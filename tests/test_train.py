"""Training runs end to end on a tiny model: losses logged, checkpoints resumable, stage-2 terms."""
from __future__ import annotations

import json
import os
from pathlib import Path
import shutil
import subprocess
import sys
import tomllib

import numpy as np
import pytest
from PIL import Image

from conftest import DATA
import torch
from safetensors.torch import load_file

from odp.codec import weights
from odp.codec.evaluation import perceptual
from odp.codec.model import ModelConfig, Tokenizer
from odp.codec.training import export, train

CONFIG = """
[model]
tile = 64
patch = 16
tokens = 16
width = 32
enc_layers = 1
dec_layers = 1
heads = 2
levels = [8, 8, 8, 8]
head_channels = [16, 8, 8, 8]

[train]
data = ["{data}"]
holdout_every = 3
areas_mp = [0.05]
seed = 0
batch = 2
steps = {steps}
lr = 1e-3
final_lr_frac = 0.1
warmup_steps = 1
weight_decay = 0.0
clip = 1.0
ema = 0.9
bf16 = false
log_every = 1
ckpt_every = 2
monitor_tiles = 2
monitor_ks = [4, 16]
{extra}
"""


def write_config(tmp_path, steps, extra=""):
    data = tmp_path / "photos"
    if not data.exists():
        data.mkdir()
        for f in ("astronaut-320x240.png", "coffee-200x150.png", "photo_768x512.png"):
            shutil.copy(DATA / f, data)
    cfg = tmp_path / f"cfg{steps}.toml"
    cfg.write_text(CONFIG.format(data=data, steps=steps, extra=extra))
    return cfg


def log_lines(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_train_logs_and_resumes(tmp_path):
    run = tmp_path / "run"
    train.main(["--config", str(write_config(tmp_path, 2)), "--run", str(run), "--threads", "1"])
    first = log_lines(run)
    assert [r["step"] for r in first if "loss" in r] == [1, 2]
    ev = [r for r in first if "eval" in r][-1]
    assert {"psnr@4", "psnr@16", "codes_used", "code_perplexity"} <= set(ev)
    train.main(["--config", str(write_config(tmp_path, 4)), "--run", str(run), "--threads", "1"])
    steps = [r["step"] for r in log_lines(run) if "loss" in r]
    assert steps == [1, 2, 3, 4]  # resumed at 2, not restarted


@pytest.mark.skipif(not perceptual.available(), reason="LPIPS weights not fetched: run `odp fetch-metrics`")
def test_stage_two_terms_and_frozen_encoder(tmp_path):
    run = tmp_path / "run"
    extra = "[loss]\nperceptual = 0.5\nperceptual_crop = 48\nadversarial = 0.1\nadv_start = 1\nfreeze_encoder = true\n"
    train.main(["--config", str(write_config(tmp_path, 2, extra)), "--run", str(run), "--threads", "1"])
    recs = [r for r in log_lines(run) if "loss" in r]
    assert "lpips_vgg" in recs[0] and "g_adv" in recs[-1] and "d_loss" in recs[-1]
    ev = [r for r in log_lines(run) if "eval" in r][-1]
    assert 0 < ev["lpips_vgg@4"] < 1.5 and 0 < ev["lpips_vgg@16"] < 1.5  # the monitor reports the perceptual term
    assert (run / "disc.safetensors").is_file()


def test_torchrun_ranks_agree_and_resume_with_another_world_size(tmp_path):
    """The training command under torchrun, 2 CPU processes over gloo, with the discriminator and its
    adaptive weight on: at every checkpoint both ranks hold the same weights (sha256 compared by the
    run itself), rank 0 alone writes the log; the run then resumes in one process from its checkpoint."""
    run = tmp_path / "run"
    extra = "[loss]\nadversarial = 0.1\nadv_start = 1\nadaptive_adv = true\nadapt_every = 1\n"
    def torchrun(steps, folder):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "odp.codec.training.train", "--config", str(write_config(tmp_path, steps, extra)),
               "--run-dir", str(folder), "--threads", "1"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert r.returncode == 0, r.stderr[-3000:]

    torchrun(4, run)
    checks = [c for c in log_lines(run) if "eval" in c]
    assert [(c["step"], c["world"], c["ranks_agree"]) for c in checks] == [(2, 2, True), (4, 2, True)]
    assert [c["step"] for c in log_lines(run) if "loss" in c] == [1, 2, 3, 4]  # one writer
    assert (run / "disc.safetensors").is_file()
    torchrun(2, tmp_path / "again")  # the same seed and world size: the same run
    losses = lambda folder: [(c["loss"], c.get("g_adv")) for c in log_lines(folder) if "loss" in c][:2]  # noqa: E731
    assert losses(tmp_path / "again") == losses(run)
    train.main(["--config", str(write_config(tmp_path, 6, extra)), "--run", str(run), "--threads", "1"])
    assert [c["step"] for c in log_lines(run) if "loss" in c] == [1, 2, 3, 4, 5, 6]


def test_gpu_pack_and_partial_lpips(tmp_path):
    """What a GPU run carries: photos of at most 0.25 MP with their names (so the same held-out split),
    and LPIPS-VGG's first three layers in int8, close to the full metric's first three terms; a run
    trains with it as its perceptual loss, logged as lpips_vgg3."""
    from odp.codec.training import gpu

    src = write_config(tmp_path, 2).parent / "photos"
    out = tmp_path / "pack"
    n = gpu.pack([str(src)], out)
    packed = sorted((out / "photos").iterdir())
    assert [p.stem for p in packed] == [p.stem for p in train.list_photos([str(src)])]
    assert all(Image.open(p).width * Image.open(p).height <= gpu.MAX_AREA * 1.01 for p in packed)
    assert n == sum(p.stat().st_size for p in packed) + (out / "lpips-vgg3.safetensors").stat().st_size < 2_500_000
    part, full = gpu.PartialLPIPS(out / "lpips-vgg3.safetensors"), perceptual.get("vgg")
    x = torch.from_numpy(np.asarray(Image.open(DATA / "astronaut-320x240.png").convert("RGB"))[:128, :128].copy())
    x = x.permute(2, 0, 1)[None].float() / 255
    y = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    fx, fy = full.embed(x), full.embed(y)
    first3 = sum(torch.nn.functional.conv2d((a / a.norm(dim=1, keepdim=True) - b / b.norm(dim=1, keepdim=True)) ** 2,
                                            w).mean() for a, b, w in zip(fx[:3], fy[:3], full.lins))
    assert float(part(x, y)) == pytest.approx(float(first3), rel=0.02)  # int8 weights, same function
    run = tmp_path / "run"
    extra = (f"[loss]\nperceptual = 0.5\nperceptual_crop = 48\nfreeze_encoder = true\n"
             f"perceptual_weights = \"{out / 'lpips-vgg3.safetensors'}\"\n")
    train.main(["--config", str(write_config(tmp_path, 2, extra)), "--run", str(run), "--threads", "1"])
    assert "lpips_vgg3" in [r for r in log_lines(run) if "loss" in r][0]
    assert "lpips_vgg3@16" in [r for r in log_lines(run) if "eval" in r][-1]


def test_gpu_slim_and_restore(tmp_path, monkeypatch):
    """slim takes the heavy files the GPU run does not need out of git's index (and ignores them), so the
    device tool leaves them here; the files stay; it refuses twice or when still too large; restore puts
    the index back as the last commit has it."""
    from odp.codec.training import gpu

    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True, text=True).stdout  # noqa: E731
    git("init", "-q")
    files = {"codec/weights/odp-small-v3.safetensors": 300, "codec/weights/odp-small-v3.decoder.onnx": 10,
             "codec/weights/odp-small-v1.safetensors": 500, "entropy/weights/ctx16-v1.safetensors": 200,
             "codec/training/snapshots/odp-small-v3/snapshot.safetensors": 400, "docs/results/points.json": 100,
             "codec/engine.py": 20}
    for name, n in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * n)
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "tree")
    (tmp_path / "notes.txt").write_bytes(b"y" * 5)  # untracked, not ignored: it travels too
    assert gpu.travelling(tmp_path) == files | {"notes.txt": 5}
    monkeypatch.setattr(gpu, "TRAVEL_LIMIT", 300)
    with pytest.raises(SystemExit, match="would travel"):
        gpu.slim(tmp_path, keep=("odp-small-v3",), carry=())
    monkeypatch.undo()
    assert git("status", "--porcelain") == "?? notes.txt\n"  # refused before touching the index
    assert gpu.slim(tmp_path, keep=("odp-small-v3",), carry=()) == (4, 300 + 10 + 20 + 5)
    assert sorted(gpu.travelling(tmp_path)) == ["codec/engine.py", "codec/weights/odp-small-v3.decoder.onnx",
                                                "codec/weights/odp-small-v3.safetensors", "notes.txt"]
    assert all((tmp_path / name).is_file() for name in files)
    with pytest.raises(SystemExit, match="already slim"):
        gpu.slim(tmp_path, carry=())
    assert gpu.restore(tmp_path) == 4
    assert git("status", "--porcelain") == "?? notes.txt\n"
    assert gpu.travelling(tmp_path) == files | {"notes.txt": 5}
    assert gpu.restore(tmp_path) == 0
    keep = ("odp-small-v3", "snapshot/odp-small-v3")  # a snapshot that gpu.sh continues: kept by name
    assert "codec/training/snapshots/odp-small-v3/snapshot.safetensors" not in gpu.slim_plan(files, keep)


@pytest.mark.slow
def test_gpu_refinement_config_trains(tmp_path):
    """The GPU run's config (gpu.sh's default) as shipped, at batch 1 on the CPU: it starts from the shipped
    refinement stage on the shipped base, trains with the packed partial LPIPS, and writes its snapshot."""
    from odp.codec.training import gpu

    src = tmp_path / "photos"  # at least 256 px a side once packed to 0.25 MP
    src.mkdir()
    for name in "abc":
        shutil.copy(DATA / "photo_768x512.png", src / f"{name}.png")
    gpu.pack([str(src)], tmp_path / "pack")
    cfg = (Path(train.__file__).parent / "configs" / "odp-refine-x2-gpu.toml").read_text()
    assert '\ndata = [".gpu/photos"]' in cfg and 'perceptual_weights = ".gpu/lpips-vgg3.safetensors"' in cfg
    cfg = (cfg.replace(".gpu/", str(tmp_path / "pack") + "/").replace("\nbatch = 128", "\nbatch = 1")
           .replace("\nsteps = 40000", "\nsteps = 1").replace("\nmonitor_tiles = 32", "\nmonitor_tiles = 2")
           .replace("\nholdout_every = 15", "\nholdout_every = 3").replace("\nbf16 = true", "\nbf16 = false"))
    assert "\nsteps = 1 " in cfg and "\nbatch = 1\n" in cfg and "\nbf16 = false\n" in cfg
    (tmp_path / "gpu.toml").write_text(cfg)
    snap = tmp_path / "snapshot"
    train.main(["--config", str(tmp_path / "gpu.toml"), "--run", str(tmp_path / "run"), "--snapshot", str(snap),
                "--threads", "1"])
    checks = [r for r in log_lines(snap) if "eval" in r]
    assert [c["step"] for c in checks] == [1] and "lpips_vgg3@256" in checks[0]
    assert checks[0]["psnr@256"] > checks[0]["psnr@0"]  # the shipped stage's weights, not a fresh start


def test_heldout_fine_tune_keeps_the_tokens():
    """heldout.fine_tuned lays the committed decoder-only snapshot over its init: same encoder, so the
    same tokens (the same bytes for both decoders), another decoder."""
    from odp.codec.training import heldout

    base = weights.load("odp-small-v2")
    tuned = heldout.fine_tuned(base, Path(train.__file__).parent / "snapshots" / "odp-small-v3")
    b, t = base.tokenizer.state_dict(), tuned.tokenizer.state_dict()
    assert all(torch.equal(b[k], t[k]) for k in b if not k.startswith(train.DECODER_PREFIXES))
    assert any(not torch.equal(b[k], t[k]) for k in b if k.startswith(train.DECODER_PREFIXES))


def test_init_from_shipped_weights(tmp_path, v1_model):
    """A new run can start from the shipped model (fine-tuning) instead of from scratch; a
    decoder-only one exports as a model that makes the same tokens and shares the context model."""
    import tomllib

    model_cfg = tomllib.loads((Path(train.__file__).parent / "configs" / "odp-small.toml").read_text())["model"]
    section = "[model]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in model_cfg.items())
    cfg = write_config(tmp_path, 1).read_text().split("[train]")[1]
    cfg = section + "[train]" + cfg.replace("batch = 2", "batch = 1").replace("areas_mp = [0.05]", "areas_mp = [0.2]")
    cfg = cfg.replace("monitor_ks = [4, 16]", 'monitor_ks = [256]\ninit = "odp-small-v1"').replace("lr = 1e-3", "lr = 1e-9")
    big = tmp_path / "big"  # 256-px tiles need photos of at least 256 px on each side
    big.mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(DATA / "photo_768x512.png", big / name)
    cfg = cfg.replace(str(tmp_path / "photos"), str(big)).replace("holdout_every = 3", "holdout_every = 2")
    (tmp_path / "init.toml").write_text(cfg.replace("lr = 1e-9", "lr = 1e-4") + "[loss]\nfreeze_encoder = true\n")
    run = tmp_path / "run"
    train.main(["--config", str(tmp_path / "init.toml"), "--run", str(run), "--threads", "2"])
    ev = [r for r in log_lines(run) if "eval" in r][-1]
    assert ev["psnr@256"] > 15  # a random model scores far lower

    export.main(["--run", str(run), "--name", "tuned", "--out", str(tmp_path)])
    base, tuned = v1_model, weights.load_path(tmp_path / "tuned.safetensors")
    assert tuned.sha256 != base.sha256 and tuned.context is not None and tuned.context.id == base.context.id
    assert (tuned.tables.freqs == base.tables.freqs).all()
    base_state, tuned_state = base.tokenizer.state_dict(), tuned.tokenizer.state_dict()
    differs = {k for k in base_state if not torch.equal(base_state[k], tuned_state[k])}
    assert differs and all(k.startswith(train.DECODER_PREFIXES) for k in differs)  # only the decoder learned


def test_a_refinement_stage_starts_as_the_identity_and_trains(tmp_path):
    """A conditioned tokenizer made from the shipped model returns the picture so far whatever its
    tokens (so no cut of a refinement stage can be worse than the stage before); a short run of the
    refinement recipe (real v3 as base and start, tiles of the image enlarged 2x) logs and checkpoints."""
    from odp.codec.model import ModelConfig, Tokenizer

    base = weights.load("odp-small-v3").tokenizer
    tok = Tokenizer(ModelConfig.from_dict({**base.cfg.to_dict(), "conditioned": True}))
    tok.load_state_dict(base.state_dict(), strict=False)
    tok.start_as_identity()
    x, cond = torch.rand(2, 3, 256, 256) * 2 - 1, torch.rand(2, 3, 256, 256) * 1.8 - 0.9
    ids = tok.encode(x, cond)
    for k in (0, 5, 256):
        assert torch.equal(tok.decode(ids[:, :k], cond), cond)
    cfg = tomllib.loads((Path(__file__).parents[1] / "codec/training/configs/odp-refine-x2.toml").read_text())
    photos = tmp_path / "big"
    photos.mkdir()
    for i, box in enumerate([(0, 0, 512, 512), (256, 0, 768, 512), (0, 0, 768, 384)]):  # tiles need >= 256 px
        Image.open(DATA / "photo_768x512.png").crop(box).save(photos / f"p{i}.png")
    cfg["train"] |= {"data": [str(photos)], "holdout_every": 3, "areas_mp": [0.2], "batch": 2,
                     "steps": 2, "ckpt_every": 2, "log_every": 1, "monitor_tiles": 4, "bf16": False}
    cfg["loss"] = {}
    (tmp_path / "refine.toml").write_text(toml_dumps(cfg))
    run = tmp_path / "run"
    train.main(["--config", str(tmp_path / "refine.toml"), "--run", str(run), "--threads", "1"])
    recs = log_lines(run)
    assert [r["step"] for r in recs if "loss" in r] == [1, 2]
    ev = [r for r in recs if "eval" in r][-1]
    assert {"psnr@0", "psnr@16", "psnr@256"} <= set(ev) and ev["psnr@0"] > 15  # @0: the first stage's picture


def test_a_decoder_fine_tune_of_a_refinement_stage_keeps_its_encoder(tmp_path, capsys):
    """Starting from a shipped refinement stage (its decoder fine-tuned, encoder frozen) keeps the trained
    conditioning: the encoder, its conditioning path included, stays the shipped one bit for bit, so the
    tokens and the context model keep their meaning. (It once restarted the stage as the identity.)"""
    cfg = one_step_fine_tune(tmp_path, "odp-refine-x2-perc.toml", monitor_ks=[256])
    run = tmp_path / "run"
    shipped = weights.load(cfg["train"]["init"]).tokenizer.state_dict()
    ckpt = load_file(str(run / "ckpt.safetensors"))
    encoder = [k for k in shipped if not k.startswith(train.DECODER_PREFIXES)]
    assert any(k.startswith("enc_cond") for k in encoder)
    assert all(torch.equal(ckpt[f"model.{k}"], shipped[k]) for k in encoder)
    assert torch.count_nonzero(ckpt["model.dec_cond.weight"]) > 0  # the trained stage, not a fresh identity
    # the step-0 reference on the same monitor crops: the shipped stage given the picture so far
    train.main(["--config", str(tmp_path / "tuned.toml"), "--run", str(tmp_path / "ref"), "--threads", "1",
                "--monitor-only", cfg["train"]["init"]])
    ref = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ref["psnr@256"] > 18 and ref["codes_used"] > 0  # (it once ran the stage without the picture so far)
    # exported as a stage of its own: refines the same model at the same scale, shares the context model
    export.main(["--run", str(run), "--name", "tuned-stage", "--out", str(tmp_path)])
    base, tuned = weights.load(cfg["train"]["init"]), weights.load_path(tmp_path / "tuned-stage.safetensors")
    assert (tuned.entry.refines, tuned.entry.scale) == (base.entry.refines, base.entry.scale)
    assert tuned.context is not None and tuned.context.id == base.context.id
    assert {p.name for p in tmp_path.glob("tuned-stage.*.onnx")} == {"tuned-stage.encoder.onnx", "tuned-stage.decoder.onnx"}
    # the committed snapshot (the decoder's EMA alone) exports as the same stage
    export.main(["--run", str(tmp_path / "snap"), "--name", "snap-stage", "--out", str(tmp_path)])
    snap = weights.load_path(tmp_path / "snap-stage.safetensors")
    assert (snap.entry.refines, snap.entry.scale, snap.context.id) == (base.entry.refines, base.entry.scale, base.context.id)
    a, b = tuned.tokenizer.state_dict(), snap.tokenizer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in encoder)
    assert all(torch.allclose(a[k], b[k], rtol=1e-2, atol=1e-3) for k in a if k.startswith(train.DECODER_PREFIXES))


def one_step_fine_tune(tmp_path: Path, config: str, monitor_ks: list[int]) -> dict:
    """One step of a shipped decoder-only recipe on crops of the test photo (run in tmp_path/run, its
    snapshot in tmp_path/snap, its config written to tmp_path/tuned.toml) -> the config."""
    cfg = tomllib.loads((Path(__file__).parents[1] / "codec/training/configs" / config).read_text())
    photos = tmp_path / "big"
    photos.mkdir()
    for i, box in enumerate([(0, 0, 512, 512), (256, 0, 768, 512), (0, 0, 768, 384)]):
        Image.open(DATA / "photo_768x512.png").crop(box).save(photos / f"p{i}.png")
    cfg["train"] |= {"data": [str(photos)], "holdout_every": 3, "areas_mp": [0.2], "batch": 1, "steps": 1,
                     "ckpt_every": 1, "log_every": 1, "monitor_tiles": 2, "monitor_ks": monitor_ks, "bf16": False}
    cfg["loss"] = {"freeze_encoder": True}
    (tmp_path / "tuned.toml").write_text(toml_dumps(cfg))
    train.main(["--config", str(tmp_path / "tuned.toml"), "--run", str(tmp_path / "run"), "--threads", "1",
                "--snapshot", str(tmp_path / "snap")])
    return cfg


def toml_dumps(cfg: dict) -> str:
    """Just enough TOML for the configs here: tables of strings, numbers, booleans, lists and inline tables."""
    def value(v):
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        return repr(v)
    return "\n".join(f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in table.items())
                     for name, table in cfg.items())


def test_heldout_compares_stage_decoders_on_the_same_cuts():
    """heldout.staged_pictures: one default file (first stage, then the shipped stage) and each stage
    decoder's picture of its cuts; inside the first stage both show the same picture."""
    from odp.codec.training import heldout

    from odp.codec import registry

    stage = weights.for_entry(registry.refinement_for(registry.find()))  # the encoder's stage
    snap = Path(train.__file__).parent / "snapshots" / "odp-refine-x2"
    engines = {"shipped": heldout.Engine(stage, "cpu"), "snapshot": heldout.Engine(heldout.fine_tuned(stage, snap), "cpu")}
    pixels = np.asarray(Image.open(DATA / "photo_768x512.png").convert("RGB").resize((384, 256)))
    at = heldout.staged_pictures(pixels, stage, engines)
    small, pics = at(200)
    assert np.array_equal(pics["shipped"], pics["snapshot"])
    large, pics = at(int(0.15 * 384 * 256 / 8))
    assert len(small) <= 200 < len(large) <= 0.15 * 384 * 256 / 8
    assert pics["shipped"].shape == pixels.shape and not np.array_equal(pics["shipped"], pics["snapshot"])


def test_a_classic_base_is_a_codec_thumbnail_of_each_tile():
    """`base = "classic"` (the classic-base experiment): the picture so far is AVIF's or WebP's file of
    the tile shrunk, decoded and enlarged back: close to the tile but blurred, drawn the same way for
    the monitor every time, and enlarged with the tile onto the stage's grid as a model base is."""
    rc = {"base": "classic", "scale": 2, "shrink": [4], "quality": {"avif": [10, 30], "webp": [10, 60]}}
    ref = train.Refinement(rc, 256, "cpu")
    photo = np.asarray(Image.open(DATA / "photo_768x512.png").convert("RGB"))
    x = train.to_model_range(torch.from_numpy(np.stack([photo[:256, :256], photo[256:, 256:512]]).copy()))
    target, so_far, drawn, drawn_so_far = ref.pairs(x, np.random.default_rng(0))
    assert target.shape == so_far.shape == (2, 3, 256, 256) and drawn is target and drawn_so_far is so_far
    assert 18 < train.psnr(so_far, target) < 35
    again = ref.pairs(x, None, full=True)
    assert all(torch.equal(a, b) for a, b in zip(ref.pairs(x, None, full=True), again))


def test_short_keep_draws_few_tokens_for_its_share_of_rows():
    """`short_keep = [p, m]`: about a share p of the rows keep at most m tokens; every row stays in lo..hi."""
    from odp.codec.training.train import draw_keep

    torch.manual_seed(0)
    plain = draw_keep(4000, 0, 256, None, "cpu")
    short = draw_keep(4000, 0, 256, [0.75, 32], "cpu")
    assert plain.min() >= 0 and plain.max() <= 256 and short.min() >= 0 and short.max() <= 256
    assert abs((plain <= 32).float().mean().item() - 33 / 257) < 0.03
    assert abs((short <= 32).float().mean().item() - (0.75 + 0.25 * 33 / 257)) < 0.03


def test_a_decoder_fine_tune_of_the_classic_stage_exports_as_one(tmp_path):
    """The decoder fine-tune of version-4 files' first stage (encoder frozen) exports as a model that still
    refines a classic thumbnail at the same scale, with the shipped tables and context model: so the
    encoder picks it for new version-4 files (registry.base_model) and it reads the old ones' tokens."""
    cfg = one_step_fine_tune(tmp_path, "odp-classic-x2-short.toml", monitor_ks=[0])
    export.main(["--run", str(tmp_path / "snap"), "--name", "classic-tuned", "--out", str(tmp_path)])
    base, tuned = weights.load(cfg["train"]["init"]), weights.load_path(tmp_path / "classic-tuned.safetensors")
    assert (tuned.entry.base, tuned.entry.scale, tuned.entry.refines) == ("classic", base.entry.scale, b"")
    assert tuned.context.id == base.context.id and (tuned.tables.freqs == base.tables.freqs).all()
    assert {p.name for p in tmp_path.glob("classic-tuned.*.onnx")} == {"classic-tuned.encoder.onnx",
                                                                       "classic-tuned.decoder.onnx"}


def test_the_thumbnail_only_fine_tune_exports_as_the_model_of_files_without_layers(tmp_path):
    """The 0-token fine-tune (odp-classic-x2-enlarge.toml) exports with --thumbnail-only: a version-4 base
    model that base_model() passes over and thumbnail_model() picks; not for any other kind of model."""
    cfg = one_step_fine_tune(tmp_path, "odp-classic-x2-enlarge.toml", monitor_ks=[0])
    export.main(["--run", str(tmp_path / "snap"), "--name", "thumb-tuned", "--out", str(tmp_path), "--thumbnail-only"])
    base, tuned = weights.load(cfg["train"]["init"]), weights.load_path(tmp_path / "thumb-tuned.safetensors")
    assert tuned.entry.thumbnail_only and not base.entry.thumbnail_only
    assert (tuned.entry.base, tuned.entry.scale, tuned.context.id) == ("classic", base.entry.scale, base.context.id)
    (tmp_path / "other").mkdir()
    one_step_fine_tune(tmp_path / "other", "odp-refine-x2-perc.toml", monitor_ks=[256])
    with pytest.raises(SystemExit, match="thumbnail-only"):
        export.main(["--run", str(tmp_path / "other" / "snap"), "--name", "x", "--out", str(tmp_path), "--thumbnail-only"])


def test_a_lighter_decoder_keeps_the_encoder_and_exports_as_a_stage_sharing_its_tokens(tmp_path):
    """`init_lighter`: a refinement stage's decoder with half the head channels (issue 26) starts from the
    shipped stage where the shapes allow (encoder bit for bit, transformer, the head's coarse path) and
    fresh elsewhere, its head's last layer at zero; it exports as a stage reading the same tokens."""
    cfg = one_step_fine_tune(tmp_path, "odp-refine-x2-lite.toml", monitor_ks=[256])
    shipped = weights.load(cfg["train"]["init"]).tokenizer.state_dict()
    ckpt = load_file(str(tmp_path / "run" / "ckpt.safetensors"))
    encoder = [k for k in shipped if not k.startswith(train.DECODER_PREFIXES)]
    assert all(torch.equal(ckpt[f"model.{k}"], shipped[k]) for k in encoder)
    assert ckpt["model.head.detail.0.weight"].shape[0] == 64 < shipped["head.detail.0.weight"].shape[0]
    assert ckpt["model.head.coarse.weight"].shape == shipped["head.coarse.weight"].shape
    export.main(["--run", str(tmp_path / "snap"), "--name", "lite-stage", "--out", str(tmp_path)])
    base, lite = weights.load(cfg["train"]["init"]), weights.load_path(tmp_path / "lite-stage.safetensors")
    assert (lite.entry.refines, lite.entry.scale, lite.context.id) == (base.entry.refines, base.entry.scale, base.context.id)
    assert lite.entry.config["head_channels"] == [64, 32, 16, 8]
    tiles = torch.zeros(1, 3, 256, 256)
    ids = base.tokenizer.encode(tiles, cond=tiles)
    assert torch.equal(ids, lite.tokenizer.encode(tiles, cond=tiles))
    assert lite.tokenizer.decode(ids[:, :16], cond=tiles).shape == (1, 3, 256, 256)
    from odp.codec.training import heldout  # compares the snapshot in its own shape with the stage it lightens
    tuned = heldout.fine_tuned(base, tmp_path / "snap")
    assert tuple(tuned.config.head_channels) == (64, 32, 16, 8)
    assert torch.allclose(tuned.tokenizer.decode(ids[:, :16], cond=tiles), lite.tokenizer.decode(ids[:, :16], cond=tiles),
                          atol=1e-3)


def test_a_lighter_start_refuses_an_encoder_of_another_shape():
    model = Tokenizer(ModelConfig(tile=64, patch=8, tokens=16, width=32, enc_layers=1, dec_layers=1, heads=2,
                                  levels=(4, 4), head_channels=(8, 8, 8)))
    other = Tokenizer(ModelConfig(tile=64, patch=8, tokens=16, width=32, enc_layers=2, dec_layers=1, heads=2,
                                  levels=(4, 4), head_channels=(16, 8, 8)))
    with pytest.raises(SystemExit, match="only the decoder may"):
        train.lighter_start(model, other.state_dict())
    state, fresh = train.lighter_start(model, Tokenizer(ModelConfig(
        tile=64, patch=8, tokens=16, width=32, enc_layers=1, dec_layers=1, heads=2, levels=(4, 4),
        head_channels=(16, 8, 8))).state_dict())
    assert fresh and all(k.startswith("head.detail") for k in fresh) and not set(fresh) & set(state)
    model.load_state_dict(state, strict=False)
    assert torch.count_nonzero(model.head.detail[-1].weight) == torch.count_nonzero(model.head.detail[-1].bias) == 0


def test_a_decoder_drawing_at_the_display_size_reads_the_same_tokens(tmp_path):
    """`out_shrink = 2` (issue 26): a decoder for odp-refine-x2-v4's tokens that draws each 2x-coded tile at the
    display size, skipping the head's 256² stage. The encoder stays v4's bit for bit; the export is a stage of
    the same tokens whose tiles are 128 px, and a file v4's encoder made decodes through it at the display
    size, on ONNX Runtime as on torch."""
    from odp.codec import refinement, stream
    from odp.codec.engine import Engine
    from odp.codec.quality import psnr

    cfg = one_step_fine_tune(tmp_path, "odp-refine-x2-half.toml", monitor_ks=[256])
    shipped = weights.load(cfg["train"]["init"]).tokenizer.state_dict()
    ckpt = load_file(str(tmp_path / "run" / "ckpt.safetensors"))
    assert all(torch.equal(ckpt[f"model.{k}"], shipped[k]) for k in shipped if not k.startswith(train.DECODER_PREFIXES))
    export.main(["--run", str(tmp_path / "snap"), "--name", "half-stage", "--out", str(tmp_path)])
    base, half = weights.load(cfg["train"]["init"]), weights.load_path(tmp_path / "half-stage.safetensors")
    assert (half.entry.refines, half.entry.scale, half.context.id) == (base.entry.refines, base.entry.scale, base.context.id)
    assert (half.entry.out_shrink, half.entry.out_tile, base.entry.out_shrink) == (2, 128, 1)
    tiles = torch.zeros(1, 3, 256, 256)
    ids = base.tokenizer.encode(tiles, cond=tiles)
    assert torch.equal(ids, half.tokenizer.encode(tiles, cond=tiles))
    assert half.tokenizer.decode(ids[:, :16], cond=tiles[..., :128, :128]).shape == (1, 3, 128, 128)

    photo = np.asarray(Image.open(DATA / "astronaut-320x240.png").convert("RGB"))
    import odp
    data = odp.encode(Image.fromarray(photo), device="cpu")
    first, stage = stream.read_stages(data)
    assert stage.model.sha256 == base.entry.sha256
    so_far = Engine(first.model, "cpu").picture(first.tokens, first.container.header, first.container.level)
    pictures = [refinement.decode_stage(Engine(m, "cpu", backend=b), stage, so_far)
                for m, b in ((half, "torch"), (half.entry, "onnx"), (base.entry, "onnx"))]
    assert all(p.shape == photo.shape for p in pictures)
    assert psnr(pictures[0], pictures[1]) > 35  # the two backends draw alike (the graphs' 8-bit products)
    # one step from v4 (its last layer starts at zero): the tokens already add to the picture so far
    assert psnr(photo, pictures[1]) > psnr(photo, so_far) + 1
    # a further stage at 4x (the same model again, past the default file) is drawn at 2x, then reduced
    engine = Engine(half.entry, "cpu")
    assert [refinement.drawn_scale(engine, s) for s in (2, 4)] == [1, 2]
    with pytest.raises(odp.FormatError, match="cannot draw a stage coded at 3x"):
        refinement.drawn_scale(engine, 3)


def test_a_decoder_drawing_smaller_sees_the_picture_so_far_as_before():
    """train.shrunk_cond_start: the patch embedding of the picture so far at the display size is fitted to
    the shipped stage's embedding of it enlarged (bicubic, as the codec enlarges it): the same view, to
    rounding, on a real photo."""
    import dataclasses
    import torch.nn.functional as F

    start = weights.load("odp-refine-x2-v4").tokenizer
    model = Tokenizer(dataclasses.replace(start.cfg, head_channels=(128, 64, 16), out_shrink=2))
    state, fresh = train.lighter_start(model, start.state_dict())
    assert "dec_cond.weight" in fresh and not any(k.startswith("enc") for k in fresh)
    model.load_state_dict(state, strict=False)
    assert train.shrunk_cond_start(model, start) < 1e-4
    photo = np.asarray(Image.open(DATA / "photo_768x512.png").convert("RGB"))[:128, :128]
    x = train.to_model_range(torch.from_numpy(photo.copy())[None])
    with torch.no_grad():
        want = start.dec_cond(F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False))
        got = model.dec_cond(x)
    assert float((got - want).norm() / want.norm()) < 1e-3
