"""``gpstoken studio`` JSON API over HTTP (no browser): uploads and their limits, encode with
priority boxes and Gaussian edits, generation from an edited layout, downloads, errors."""
from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gpstoken
from gpstoken import cli
from gpstoken.studio import Limits, make_server

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "data" / "astronaut.png"
FACE = [80, 40, 180, 140]


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class Client:
    def __init__(self, server):
        self.server = server
        self.url = server.url.rstrip("/")

    def call(self, path: str, body=None, *, headers=None, method=None):
        """(status, decoded JSON or bytes) of one request."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        hdrs = {"Content-Type": "application/json"} if isinstance(body, dict) else {"Content-Type": "image/png"}
        req = urllib.request.Request(self.url + path, data=data, headers={**hdrs, **(headers or {})}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                status, raw, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
        return status, json.loads(raw) if ctype.startswith("application/json") else raw

    def job(self, path: str, body: dict) -> dict:
        """Submit a job and wait for it; returns the final job status."""
        status, reply = self.call(path, body)
        assert status == 202, reply
        return self.server.jobs.wait(reply["job"])

    def open_photo(self) -> str:
        status, reply = self.call("/api/image", {"example": "astronaut.png"})
        assert status == 200, reply
        return reply["session"]


@pytest.fixture(scope="module")
def client():
    server = make_server(port=0, limits=Limits(max_upload_bytes=400_000, max_pixels=2_000_000, max_side=256))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Client(server)
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def encoded(client):
    """A photo session encoded twice: 64 tokens, then 64 tokens with a priority box on the face."""
    sid = client.open_photo()
    first = client.job("/api/encode", {"session": sid, "n_tokens": 64})
    second = client.job("/api/encode", {"session": sid, "n_tokens": 64, "priority": [FACE]})
    assert first["state"] == "done" and second["state"] == "done", (first, second)
    return sid, first["result"], second["result"]


def test_info_page_and_static_files(client):
    status, info = client.call("/api/info")
    assert status == 200
    assert info["model"] == "gpstoken-tiny" and info["default_tokens"] == 128
    assert info["examples"] == ["astronaut.png", "chelsea.png", "coffee.png"]
    assert info["generator"]["n_tokens"] == 128 and len(info["generator"]["classes"]) == 16
    status, page = client.call("/")
    assert status == 200 and b"gpstoken studio" in page and b"/static/studio.js" in page
    for name in ("studio.js", "studio.css"):
        assert client.call(f"/static/{name}")[0] == 200
    assert client.call("/static/../engine.py")[0] == 404
    assert client.call("/api/examples/astronaut.png")[0] == 200
    assert client.call("/api/examples/..%2Fengine.py")[0] == 404


def test_priority_box_raises_psnr_inside_the_box(encoded):
    _, first, second = encoded
    after, before = second["after"], second["before"]
    assert before["version"] == first["after"]["version"] and after["version"] == before["version"] + 1
    assert after["priority"] == [FACE] and after["total_tokens"] == before["total_tokens"] == 64
    assert after["psnr_boxes"] > before["psnr_boxes"] + 1.0  # both measured inside the new box
    # more of the 64 Gaussians sit inside the face box than without it
    inside = lambda r: sum(FACE[0] <= g[0] <= FACE[2] and FACE[1] <= g[1] <= FACE[3] for g in r["gaussians"])  # noqa: E731
    assert inside(after) > inside(before)
    # the reported PSNR is that of the PNG a user downloads
    assert 5.0 < after["psnr"] < 60.0 and len(after["cells"]) == len(after["refined"]) == 64


def test_gaussian_edits_add_move_remove(client, encoded):
    sid, _, second = encoded
    base = second["after"]
    g = base["gaussians"]
    far = max(range(len(g)), key=lambda i: g[i][0])  # rightmost Gaussian, moved to the left edge
    edits = {"base": base["version"], "remove": [0], "move": {str(far): [20, round(g[far][1])]},
             "add": [[100, 100, 131, 131], [10, 200, 41, 231]]}
    done = client.job("/api/encode", {"session": sid, "edits": edits})
    assert done["state"] == "done", done
    after = done["result"]["after"]
    assert after["total_tokens"] == 64 - 1 + 2 and after["tokens_per_patch"] == 65
    assert after["priority"] == [FACE] and after["psnr_boxes"] is not None
    # calibrated layout: its cells tile the 256x256 image exactly
    area = sum((c[2] - c[0] + 1) * (c[3] - c[1] + 1) for c in after["cells"])
    assert area == pytest.approx(256 * 256)
    # a Gaussian now sits near each added box and near the moved-to point
    near = lambda x, y: min(np.hypot(a[0] - x, a[1] - y) for a in after["gaussians"])  # noqa: E731
    assert near(115.5, 115.5) <= 16 and near(25.5, 215.5) <= 16 and near(20, g[far][1]) <= 16
    # the same edits again are stale: their indices refer to the previous layout
    stale = client.job("/api/encode", {"session": sid, "edits": edits})
    assert stale["state"] == "error" and "no longer the current one" in stale["error"]


def test_downloads_png_and_gpst(client, encoded):
    sid = encoded[0]
    status, raw = client.call(f"/api/sessions/{sid}/after.gpst")
    assert status == 200
    path = Path(client.server.studio._tmp).parent / f"test-{sid}.gpst"
    try:
        path.write_bytes(raw)
        tokens = gpstoken.GPSTokens.load(path)
    finally:
        path.unlink(missing_ok=True)
    assert tokens.model == "gpstoken-tiny" and tokens.image_size == (256, 256)
    for name in ("after.png", "before.png", "layout.png", "image.png"):
        status, raw = client.call(f"/api/sessions/{sid}/{name}")
        assert status == 200 and Image.open(io.BytesIO(raw)).size == (256, 256), name
    # the downloaded "after" picture is the decoded .gpst
    rec = gpstoken.decode(tokens)
    after = Image.open(io.BytesIO(client.call(f"/api/sessions/{sid}/after.png")[1]))
    assert np.array_equal(np.asarray(rec), np.asarray(after))
    assert client.call(f"/api/sessions/{sid}/secret.txt")[0] == 404
    assert client.call("/api/sessions/nope/after.png")[0] == 404


def test_gpst_upload_continues_editing_or_names_the_wrong_model(client, encoded, tmp_path):
    sid = encoded[0]
    raw = client.call(f"/api/sessions/{sid}/after.gpst")[1]
    status, reply = client.call("/api/image", raw, headers={"X-Filename": "face.gpst"})
    assert status == 200, reply
    path = tmp_path / "x.gpst"
    path.write_bytes(raw)
    tokens = gpstoken.GPSTokens.load(path)
    st = reply["state"]
    n = tokens.total_tokens
    assert st["after"]["total_tokens"] == n and st["after"]["priority"] == [] and st["after"]["psnr"] is None
    assert st["after"]["cells"] == client.server.studio.state(client.server.studio.session(sid))["after"]["cells"]
    # Gaussian edits on the opened tokens re-encode their decoded picture; without calibration
    # the moved Gaussian sits exactly where it was put
    edits = {"base": st["after"]["version"], "remove": [3], "move": {"7": [50, 60]}, "calibrate": False}
    done = client.job("/api/encode", {"session": reply["session"], "edits": edits})
    assert done["state"] == "done" and done["result"]["after"]["total_tokens"] == n - 1
    assert done["result"]["after"]["psnr"] > 10.0
    assert min(np.hypot(g[0] - 50, g[1] - 60) for g in done["result"]["after"]["gaussians"]) < 0.01
    # tokens of another model: refused with the model to start the studio with
    other = gpstoken.GPSTokens(tokens.geometry, tokens.features, tokens.image_size, tokens.layout, "gpstoken-m128")
    other.save(path)
    status, reply = client.call("/api/image", path.read_bytes(), headers={"X-Filename": "m128.gpst"})
    assert status == 400 and "model 'gpstoken-m128'" in reply["error"] and "--model gpstoken-m128" in reply["error"]
    # a safetensors file that is not a token file
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(path))
    status, reply = client.call("/api/image", path.read_bytes(), headers={"X-Filename": "weights.safetensors"})
    assert status == 415 and "weights.safetensors" in reply["error"] and "not a gpstoken token file" in reply["error"]
    assert str(tmp_path) not in reply["error"]


def test_bad_uploads_get_clear_messages(client):
    status, reply = client.call("/api/image", b"this is not an image", headers={"X-Filename": "notes.txt"})
    assert status == 415 and "notes.txt: not an image file" in reply["error"]
    status, reply = client.call("/api/image", _png(Image.new("RGB", (20, 40))))
    assert status == 400 and "too small: 20x40" in reply["error"] and "32x32" in reply["error"]
    status, reply = client.call("/api/image", b"\0" * 400_001)
    assert status == 413 and "too large" in reply["error"] and "limit" in reply["error"]
    big = _png(Image.new("RGB", (2000, 1100)))  # small file, too many pixels
    status, reply = client.call("/api/image", big)
    assert status == 413 and "2000x1100" in reply["error"] and "megapixels" in reply["error"]
    status, reply = client.call("/api/image", {"example": "../../etc/passwd"})
    assert status == 404 and "astronaut.png" in reply["error"]


def test_large_images_are_downscaled(client):
    img = Image.open(PHOTO).convert("RGB").resize((600, 300))
    status, reply = client.call("/api/image", _png(img))
    assert status == 200, reply
    assert (reply["width"], reply["height"]) == (256, 128) and "downscaled from 600x300" in reply["note"]


def test_bad_requests(client, encoded):
    sid = encoded[0]
    bad = client.job("/api/encode", {"session": sid, "n_tokens": 5})
    assert bad["state"] == "error" and bad["status"] == 400 and "n_tokens: must lie in [16, 512], got 5" in bad["error"]
    bad = client.job("/api/encode", {"session": sid, "n_tokens": 64, "priority": [[10, 10, 11]]})
    assert bad["state"] == "error" and "priority[0]: expected 4 numbers" in bad["error"]
    status, reply = client.call("/api/encode", {"session": "expired"})
    assert status == 404 and "load the image again" in reply["error"]
    status, reply = client.call("/api/encode", b"{not json", headers={"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in reply["error"]
    status, reply = client.call("/api/info", headers={"Host": "attacker.example:7860"})
    assert status == 403 and "localhost" in reply["error"]
    assert client.call("/api/nothing", {})[0] == 404


def test_generate_then_regenerate_for_an_edited_layout(client):
    done = client.job("/api/generate", {"class_id": 4, "seed": 1, "steps": 3})
    assert done["state"] == "done", done
    st = done["result"]
    assert st["kind"] == "generated" and st["name"] == "generated chelsea" and st["after"]["total_tokens"] == 128
    assert st["after"]["psnr"] is None
    sid, base = st["session"], st["after"]
    # the generator needs exactly 128 tokens: an unbalanced edit is refused with the reason
    edits = {"base": base["version"], "add": [[10, 10, 41, 41]]}
    bad = client.job("/api/generate", {"session": sid, "edits": edits, "seed": 1, "steps": 3})
    assert bad["state"] == "error" and "exactly 128 tokens" in bad["error"]
    edits = {"base": base["version"], "remove": [5], "add": [[10, 10, 41, 41]]}
    again = client.job("/api/generate", {"session": sid, "edits": edits, "seed": 1, "steps": 3, "class_id": 4})
    assert again["state"] == "done", again
    after, before = again["result"]["after"], again["result"]["before"]
    assert after["version"] == before["version"] + 1 and after["total_tokens"] == 128
    assert min(np.hypot(g[0] - 25.5, g[1] - 25.5) for g in after["gaussians"]) <= 16
    # encode is for photos
    bad = client.job("/api/encode", {"session": sid, "n_tokens": 64})
    assert bad["state"] == "error" and "generated image" in bad["error"]


def test_temp_folder_is_removed_on_close_and_examples_folder(tmp_path):
    from gpstoken.studio import Studio, StudioError

    Image.new("RGB", (64, 48), (200, 10, 10)).save(tmp_path / "red.png")
    studio = Studio(generator=None, examples=tmp_path)
    tmp = studio._tmp
    assert tmp.is_dir() and tmp.name.startswith("gpstoken-studio-")
    assert studio.examples() == ["red.png"]
    assert studio.open_example("red.png")["width"] == 64
    with pytest.raises(StudioError, match="expected one of"):
        studio.example_bytes("astronaut.png")
    studio.close()
    assert not tmp.exists()
    assert Studio(generator=None, examples=tmp_path / "missing").examples() == []


def test_cli_studio_wrong_model_and_busy_port(capsys):
    assert cli.main(["studio", "--model", "no-such-model", "--no-browser"]) == 1
    assert "no-such-model" in capsys.readouterr().err
    assert cli.main(["studio", "--port", "70000", "--no-browser"]) == 1
    assert "--port: must be in [0, 65535]" in capsys.readouterr().err
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert cli.main(["studio", "--generator", "none", "--port", str(port), "--no-browser"]) == 1
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is in use" in err and "--port" in err


def test_app_py_serves_the_page_on_all_interfaces():
    import os
    import subprocess
    import sys

    env = {**os.environ, "PORT": "0", "GPSTOKEN_GENERATOR": "none", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        why = proc.stderr.read() if proc.poll() is not None else ""
        assert "gpstoken studio on http://127.0.0.1:" in line, (line, why)
        url = line.split()[3]
        with urllib.request.urlopen(url + "api/info", timeout=60) as r:
            info = json.loads(r.read())
        assert info["generator"] is None and info["examples"] == ["astronaut.png", "chelsea.png", "coffee.png"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "reachable from other machines" in proc.stderr.read()
