"""`python -m odp.codec.evaluation.evaluate`: per-k rate and quality of one encode, uniform and adaptive."""
from __future__ import annotations

import json
import shutil

from conftest import DATA
from odp.codec.evaluation import evaluate


def test_adaptive_report_and_monotonicity_line(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(DATA / "photo_768x512.png", folder)
    out = tmp_path / "points.json"
    evaluate.main([str(folder), "--adaptive", "--tokens", "64", "16", "256", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [r["tokens"] for r in rows] == [16, 64, 256]  # sorted, one point each
    assert rows[0]["bytes"] < rows[1]["bytes"] <= rows[2]["bytes"]
    assert rows[2]["mean_tokens"] < 256  # the adaptive file caps tiles below the model's 256
    text = capsys.readouterr().out
    assert "psnr:" in text and "ms_ssim:" in text
    assert rows[1]["psnr"] > rows[0]["psnr"] + 0.5
