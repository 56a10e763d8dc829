"""Transcoding many files on a real local Ray instance (the odp[ray] extra, codec/distributed.py).

The outputs equal what `odp encode` / `odp decode` write for the same files, byte for byte; a corrupt
input among them is reported and the rest complete; a rerun skips outputs that are there and valid;
and a run killed halfway continues without redoing the files it finished.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import odp

ray = pytest.importorskip("ray", reason='Ray is not installed: pip install -e ".[ray]"')
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance of 2 CPUs for the in-process tests (transcode joins it)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def photo_folder(folder: Path, copies: int = 1) -> list[Path]:
    """Real photos (and copies of the 768x512 one under other names), no two with one output name."""
    folder.mkdir()
    paths = []
    for name in ("astronaut-320x240.png", "coffee-200x150.png", "photo_768x512.png"):
        paths.append(folder / name)
        paths[-1].write_bytes((DATA / name).read_bytes())
    for i in range(1, copies):
        paths.append(folder / f"photo-{i}.png")
        paths[-1].write_bytes((DATA / "photo_768x512.png").read_bytes())
    return paths


def test_outputs_equal_local_ones_and_a_bad_input_is_reported(local_ray, tmp_path):
    paths = photo_folder(tmp_path / "in")
    bad = tmp_path / "in" / "broken.png"
    bad.write_bytes((DATA / "photo_768x512.png").read_bytes()[:3000])  # a PNG cut short
    out = tmp_path / "out"
    out.mkdir()
    failures = []
    s = odp.transcode([*paths, bad], out, progress=False, on_failure=failures.append)
    assert (s.done, s.skipped, len(s.failed)) == (3, 0, 1) and failures == s.failed
    assert "broken.png" in s.failed[0] and "\n" not in s.failed[0]
    assert not (out / "broken.odp").exists()
    for p in paths:  # what `odp encode` writes for each alone (the local batch makes the same files)
        assert (out / f"{p.stem}.odp").read_bytes() == odp.encode(Image.open(p)), p.name
    assert s.pixels == sum(Image.open(p).width * Image.open(p).height for p in paths) and s.bytes_out > 0

    again = odp.transcode([*paths, bad], out, progress=False)  # a rerun keeps the valid outputs
    assert (again.done, again.skipped, len(again.failed)) == (0, 3, 1)

    pngs = tmp_path / "png"
    pngs.mkdir()
    d = odp.transcode(sorted(out.glob("*.odp")), pngs, decode=True, progress=False)
    assert (d.done, len(d.failed)) == (3, 0)
    for f in sorted(out.glob("*.odp")):
        assert np.array_equal(np.asarray(Image.open(pngs / f"{f.stem}.png")), np.asarray(odp.decode(f.read_bytes())))


def test_a_ray_dataset_of_files(local_ray, tmp_path):
    """A dataset the user already has: rows with "path" and "bytes", as read_binary_files gives."""
    paths = photo_folder(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    ds = ray.data.read_binary_files([str(p) for p in paths], include_paths=True)
    s = odp.transcode(ds, out, progress=False)
    assert (s.done, len(s.failed)) == (3, 0)
    assert all((out / f"{p.stem}.odp").read_bytes() == odp.encode(Image.open(p)) for p in paths)


def test_two_inputs_with_one_output_name_and_an_existing_foreign_file(local_ray, tmp_path):
    paths = photo_folder(tmp_path / "in")
    twin = tmp_path / "other" / paths[0].name
    twin.parent.mkdir()
    twin.write_bytes(paths[0].read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    (out / "coffee-200x150.odp").write_bytes(b"not an odp file")  # not ours: never overwritten unasked
    s = odp.transcode([*paths, twin], out, progress=False)
    assert s.done == 2 and len(s.failed) == 2
    assert any("already the output of" in line for line in s.failed)
    assert any("coffee-200x150.odp: already exists" in line and "--force" in line for line in s.failed)
    assert (out / "coffee-200x150.odp").read_bytes() == b"not an odp file"


def test_a_killed_run_continues_without_redoing_finished_files(tmp_path):
    """The command line on its own local Ray: killed once some outputs are written, then run again."""
    paths = photo_folder(tmp_path / "in", copies=10)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "odp.cli.main", "encode", *map(str, paths), "-o", str(out), "--cluster", "local"]
    env = dict(os.environ, ODP_THREADS="1", OMP_NUM_THREADS="1")
    run = subprocess.Popen(cmd + ["--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           start_new_session=True)
    deadline = time.time() + 900
    while time.time() < deadline and run.poll() is None and not list(out.glob("*.odp")):
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    run.wait()
    # Ray's daemons and workers die with their parent (PR_SET_PDEATHSIG), not at once: a worker may still
    # finish the file in hand, so wait until the outputs stop changing
    before, settle_by = None, time.time() + 120
    while time.time() < settle_by:
        time.sleep(3)
        now = {f.name: f.stat().st_mtime_ns for f in out.glob("*.odp")}
        if now == before:
            break
        before = now
    assert before, "no output appeared before the kill"
    for f in out.glob("*.odp"):  # what a kill leaves is whole: outputs are written atomically
        odp.verify(f.read_bytes())
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{len(before)} skipped" in r.stderr
    assert sorted(f.name for f in out.glob("*.odp")) == sorted(f"{p.stem}.odp" for p in paths)
    assert all(out.joinpath(name).stat().st_mtime_ns == t for name, t in before.items())  # not redone
    assert (out / "photo-3.odp").read_bytes() == odp.encode(Image.open(paths[0].parent / "photo_768x512.png"))
