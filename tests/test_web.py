"""`sjc serve` through gradio's own client, against a real server on loopback started by these tests."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402

from sjc.app.runs.checkpoint import list_checkpoints  # noqa: E402
from sjc.app.settings.config import markdown_text  # noqa: E402
from sjc.priors.toy import PromptError, parse_prompt  # noqa: E402
from webserver import http_get, running_server  # noqa: E402

pytestmark = pytest.mark.slow
STATUS, PROGRESS, PREVIEW, LOSS, SIGMA, VIEWER, VIDEO, METRICS, FILES, GALLERY, SELECTED = range(11)  # outputs


def form(
    prompt: str, steps: int | None = None, seed: int = 0, preset: str = "tiny", prior: str = "toy", **image
) -> dict:
    return {
        "prompt": prompt,
        "prior": prior,
        "preset": preset,
        "steps": steps,
        "seed": seed,
        "scoring": "paas",
        "grid_size": None,
        "emptiness_weight": None,
        "guidance_scale": None,
        "threads": None,
        "model": None,
        "picture": image.get("picture"),
        "image_view": image.get("image_view", "0, 0"),
        "estimate": image.get("estimate", False),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    runs = root / "runs"
    (root / "secret.txt").write_text("not for the page")
    with running_server(runs) as (url, proc):
        yield url, runs, proc


def wait_for_log(run_dir: Path, min_step: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = run_dir / "log.jsonl"
        if log.exists():
            lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
            if lines and lines[-1]["step"] >= min_step:
                return lines[-1]["step"]
        time.sleep(0.2)
    raise AssertionError(f"{run_dir} logged no step {min_step} in {timeout} s")


def test_tiny_run_end_to_end(server):
    url, runs, _ = server
    out = Client(url, verbose=False).predict(**form("a red and blue cube"), api_name="/generate")
    run_dir = runs / out[SELECTED]
    assert out[STATUS].startswith("finished 300 steps"), out[STATUS]
    for name in ("mesh.glb", "mesh.obj", "turntable.mp4", "metrics.json", "config.json"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"| 3D IoU | {metrics['iou_3d']:.3f} |" in out[METRICS]
    assert "silhouette IoU" in out[METRICS] and "PSNR" in out[METRICS] and "| shape |" in out[METRICS]
    assert metrics["iou_3d"] > 0.3  # a tiny run already finds the cube's bulk
    # The viewer, the video and the downloads are the run's own files, sent back byte for byte. (The page sets the
    # viewer in a second event once the stream ends; opening the run from the gallery sets it the same way.)
    opened = Client(url, verbose=False).predict(run_dir.name, api_name="/open_run")
    assert Path(opened[VIEWER]).read_bytes() == (run_dir / "mesh.glb").read_bytes()
    assert Path(out[VIDEO]).read_bytes() == (run_dir / "turntable.mp4").read_bytes()
    names = sorted(Path(p).name for p in out[FILES])
    assert names == sorted(["mesh.glb", "mesh.obj", "turntable.mp4", f"{run_dir.name}.zip"])
    zipped = next(Path(p) for p in out[FILES] if p.endswith(".zip"))
    with zipfile.ZipFile(zipped) as archive:
        listed = archive.namelist()
    assert f"{run_dir.name}/config.json" in listed and f"{run_dir.name}/mesh.glb" in listed
    assert any(name.startswith(f"{run_dir.name}/checkpoints/") for name in listed)
    # The live parts ended on the last step, and the gallery lists the run.
    assert 'data-step="300" data-steps="300"' in out[PROGRESS]
    assert out[LOSS]["data"] and out[SIGMA]["data"][-1][0] == 300
    gallery = Client(url, verbose=False).predict(api_name="/gallery")
    assert any(item["caption"] == f"{run_dir.name} · finished, 300 steps" for item in gallery)


def test_bad_prompt_gets_the_cli_message_and_the_server_keeps_serving(server):
    url, runs, proc = server
    client = Client(url, verbose=False)
    with pytest.raises(PromptError) as expected:
        parse_prompt("a red banana")
    before = set(runs.iterdir()) if runs.exists() else set()
    out = client.predict(**form("a red banana"), api_name="/generate")
    assert out[STATUS] == "**error:** " + markdown_text(str(expected.value))  # shown as text, not Markdown
    out = client.predict(**form("a red cube", steps=0), api_name="/generate")
    assert out[STATUS] == "**error:** --train.steps must be positive, got 0"
    out = client.predict(**form("   "), api_name="/generate")
    assert out[STATUS].startswith("**error:** type a prompt first")
    assert (set(runs.iterdir()) if runs.exists() else set()) == before  # nothing written for a refused run
    assert proc.poll() is None
    assert isinstance(client.predict(api_name="/gallery"), list)  # still serving


def test_stop_writes_a_checkpoint_and_the_page_resumes_it(server):
    url, runs, _ = server
    client = Client(url, verbose=False)
    job = client.submit(**form("a green cone", steps=3000, seed=3), api_name="/generate")
    run_dir = runs / "a-green-cone-seed3"
    wait_for_log(run_dir, 50)
    assert client.predict(api_name="/stop").startswith("stopping after this step")
    out = job.result(timeout=60)
    assert out[STATUS].startswith("stopped at step"), out[STATUS]
    stopped = int(out[STATUS].split()[3].rstrip(";"))
    assert 50 <= stopped < 3000
    assert list_checkpoints(run_dir)[-1][0] == stopped  # the step in flight was checkpointed
    assert not (run_dir / "mesh.glb").exists()
    assert "resumable" in out[METRICS]
    opened = client.predict("a-green-cone-seed3", api_name="/open_run")
    assert f"stopped at step {stopped} of 3000; resumable" in opened[METRICS]
    out = client.predict("a-green-cone-seed3", None, api_name="/resume")
    assert out[STATUS].startswith("finished 3000 steps"), out[STATUS]
    assert list_checkpoints(run_dir)[-1][0] == 3000 and (run_dir / "mesh.glb").is_file()
    steps = [json.loads(x)["step"] for x in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 3000  # one continuous log, no step twice


def test_two_visitors_queue_one_run_at_a_time(server):
    url, runs, _ = server
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    a = first.submit(**form("a blue sphere", steps=1500, seed=1), api_name="/generate")
    wait_for_log(runs / "a-blue-sphere-seed1", 10)
    b = second.submit(**form("a yellow torus", seed=1), api_name="/generate")
    seen = []
    while not a.done():
        status = b.status()
        seen.append((status.code.name, status.rank))
        if (runs / "a-yellow-torus-seed1").exists():  # the second run starts only once the first has finished
            assert (runs / "a-blue-sphere-seed1" / "mesh.glb").exists()
        time.sleep(0.2)
    assert ("IN_QUEUE", 0) in seen  # the second visitor was told their place: first in line
    assert a.result()[STATUS].startswith("finished 1500 steps")
    assert b.result(timeout=120)[STATUS].startswith("finished 300 steps")


def test_a_closed_tab_stops_its_run_with_a_checkpoint(server):
    url, runs, _ = server
    job = Client(url, verbose=False).submit(**form("an orange cylinder", steps=20000, seed=4), api_name="/generate")
    run_dir = runs / "an-orange-cylinder-seed4"
    wait_for_log(run_dir, 20)
    job.cancel()  # what the page sees when its visitor goes away

    def state():
        saved = list_checkpoints(run_dir)
        return (saved[-1][0] if saved else None), (run_dir / "log.jsonl").read_text().count("\n")

    # Stopped: for a second and a half neither a checkpoint nor a log line comes (a step takes about 10 ms). The
    # stop checkpoint may fall on a multiple of the periodic one: what tells them apart is that nothing follows.
    deadline, last = time.monotonic() + 30, None
    while time.monotonic() < deadline and (last is None or last[0] is None or state() != last):
        last = state()
        time.sleep(1.5)
    stopped, logged = state()
    last_logged = json.loads((run_dir / "log.jsonl").read_text().splitlines()[-1])["step"]
    assert stopped is not None and 20 <= stopped < 20000 and stopped >= last_logged, (stopped, last_logged)
    time.sleep(1.5)
    assert state() == (stopped, logged)  # and nothing goes on afterwards


def test_files_outside_the_runs_folder_are_refused(server):
    url, runs, _ = server
    Client(url, verbose=False).predict(**form("a purple cube"), api_name="/generate")
    inside = runs / "a-purple-cube-seed0" / "config.json"
    base = url + "gradio_api/file="
    status, body = http_get(base + urllib.parse.quote(str(inside)))
    assert status == 200 and b'"prompt": "a purple cube"' in body  # the control: the page does serve its runs
    repo_file = Path(__file__).resolve().parents[1] / "pyproject.toml"
    for target in ("/etc/passwd", str(runs / ".." / "secret.txt"), str(runs.parent / "secret.txt"), str(repo_file)):
        status, body = http_get(base + urllib.parse.quote(target))
        assert status in (403, 404), (target, status)
        assert b"root:" not in body and b"not for the page" not in body and b"[project]" not in body
    client = Client(url, verbose=False)
    for name in ("../secret.txt", "..", "/etc", "a-purple-cube-seed0/../..", ".web"):
        out = client.predict(name, api_name="/open_run")
        assert out[STATUS].startswith("**error:** no run named"), (name, out[STATUS])
    out = client.predict("../../etc/passwd", None, api_name="/resume")
    assert out[STATUS].startswith("**error:** no run named")
    out = client.predict(**form("../../etc/passwd"), api_name="/generate")
    assert out[STATUS].startswith("**error:** ")  # not a toy prompt
    assert sorted(p.name for p in runs.parent.iterdir() if p.is_dir()) == ["runs"]


def upload(url: str, size: int) -> tuple[int, bytes]:
    """POST a file of `size` bytes to gradio's upload route, as any visitor can."""
    boundary = "sjc-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="x.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + b"x" * size
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        url + "gradio_api/upload", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_sigterm_stops_the_running_job_with_a_checkpoint_then_exits(tmp_path):
    runs = tmp_path / "runs"
    with running_server(runs) as (url, proc):
        Client(url, verbose=False).submit(**form("a blue cube", steps=20000), api_name="/generate")
        run_dir = runs / "a-blue-cube-seed0"
        wait_for_log(run_dir, 30)
        proc.send_signal(signal.SIGTERM)  # what a service manager sends
        assert proc.wait(timeout=60) == 0
    stopped = list_checkpoints(run_dir)[-1][0]
    assert 30 <= stopped < 20000 and stopped % 100, "the stop checkpoint, not a periodic one"
    log = next(tmp_path.glob("serve-*.log")).read_text()
    assert f"stopped a-blue-cube-seed0 at step {stopped}; its checkpoint is saved" in log


def test_two_visitors_and_a_command_line_writer_never_share_a_run(tmp_path):
    runs = tmp_path / "runs"
    with running_server(runs, "--concurrency", "3", "--max-grid", "24", "--max-upload-mb", "1") as (url, proc):
        assert upload(url, 2_000_000)[0] == 413  # gradio's upload route keeps to --max-upload-mb
        assert upload(url, 1000)[0] == 200
        first, second = Client(url, verbose=False), Client(url, verbose=False)
        out = first.predict(**{**form("a red cube"), "grid_size": 32}, api_name="/generate")
        assert out[STATUS] == "**error:** grid size 32 is above this server's limit of 24"
        a = first.submit(**form("a green sphere", steps=20000), api_name="/generate")
        b = first.submit(**form("a green sphere", steps=20000, seed=1), api_name="/generate")
        x, y = runs / "a-green-sphere-seed0", runs / "a-green-sphere-seed1"
        wait_for_log(x, 10)
        wait_for_log(y, 10)
        # A second visitor, and `sjc generate --resume` beside the page, are refused while the page writes it.
        out = second.predict(x.name, None, api_name="/resume")
        assert out[STATUS] == f"**error:** {x.name} is running elsewhere; it can be resumed once it stops"
        cli = subprocess.run(
            [sys.executable, "-m", "sjc", "generate", "--resume", str(x)], capture_output=True, text=True, timeout=120
        )
        assert cli.returncode == 2 and "is being written by process" in cli.stderr, cli.stderr
        captions = [item["caption"] for item in second.predict(api_name="/gallery")]
        assert any(c.startswith(f"{x.name} · running elsewhere") for c in captions), captions
        # One visitor's Stop reaches both of their runs.
        assert first.predict(api_name="/stop").startswith("stopping after this step in each of your 2 runs")
        for job, run_dir in ((a, x), (b, y)):
            status = job.result(timeout=60)[STATUS]
            stopped = re.match(r"stopped at step (\d+)", status)
            assert stopped, status
            assert list_checkpoints(run_dir)[-1][0] == int(stopped[1])  # the stop's checkpoint, whatever its step
        steps = [json.loads(line)["step"] for line in (x / "log.jsonl").read_text().splitlines()]
        assert steps == sorted(set(steps))  # one writer: the log never interleaves
        opened = second.predict(x.name, api_name="/open_run")  # resumable again once stopped
        assert "; resumable" in opened[METRICS], opened[METRICS]


def test_an_uploaded_picture_is_lifted_by_the_toy_image_prior(server, tmp_path):
    from gradio_client import handle_file

    from test_image3d import write_picture

    url, runs, _ = server
    client = Client(url, verbose=False)
    out = client.predict(**form("", prior="toy-image"), api_name="/generate")
    assert out[STATUS] == "**error:** the toy-image prior draws the object of a picture: upload one first"
    picture = write_picture(tmp_path / "torus.png", "a green and red torus", elevation=15.0)
    bad_view = form("", prior="toy-image", picture=handle_file(str(picture)), image_view="0, 95")
    bad = client.predict(**bad_view, api_name="/generate")
    message = "--image.view's elevation must be in [-90, 90] degrees, got 95.0"
    assert bad[STATUS] == "**error:** " + markdown_text(message)
    out = client.predict(
        **form("", prior="toy-image", picture=handle_file(str(picture)), estimate=True), api_name="/generate"
    )
    assert out[STATUS].startswith("finished 300 steps"), out[STATUS]
    run_dir = runs / out[SELECTED]
    assert (run_dir / "reference-picture.png").is_file()
    assert json.loads((run_dir / "reference.json").read_text())["view"]["elevation"] == 15.0
    assert "| the picture shows | a green and red torus |" in out[METRICS]


def _post_login(url: str, user: str, password: str) -> tuple[int, str | None]:
    """Status of gradio's login form and the session cookie it sets."""
    import urllib.parse

    data = urllib.parse.urlencode({"username": user, "password": password}).encode()
    request = urllib.request.Request(url + "login", data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            cookie = reply.headers.get("set-cookie")
            return reply.status, cookie.split(";")[0] if cookie else None
    except urllib.error.HTTPError as err:
        return err.code, None


def _get(url: str, cookie: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code


def test_a_login_guards_the_page_its_api_and_its_files(tmp_path):
    runs = tmp_path / "runs"
    (runs / "done").mkdir(parents=True)
    (runs / "done" / "views.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    logins = tmp_path / "logins.txt"
    logins.write_text("# who may use this machine\nbob:hunter2\n\n")
    with running_server(runs, "--auth", "alice:s3cret", "--auth-file", str(logins)) as (url, _):
        guarded = [url + "config", url + "gradio_api/info", f"{url}gradio_api/file={runs / 'done' / 'views.png'}"]
        assert [_get(u) for u in guarded] == [401, 401, 401]
        assert _post_login(url, "alice", "wrong")[0] == 400
        assert _post_login(url, "mallory", "s3cret")[0] == 400
        for user, password in (("alice", "s3cret"), ("bob", "hunter2")):
            status, cookie = _post_login(url, user, password)
            assert status == 200 and cookie
            assert [_get(u, cookie) for u in guarded] == [200, 200, 200]


def test_serving_beyond_this_machine_without_a_login_warns_and_bad_logins_are_refused(tmp_path, capsys, monkeypatch):
    from sjc.app.commands import cli
    from sjc.app.web import page

    served = []
    monkeypatch.setattr(page, "serve", lambda *args: served.append(args))
    assert cli.main(["serve", "--runs", str(tmp_path / "r"), "--host", "0.0.0.0"]) == 0
    assert "without a login" in capsys.readouterr().err and served[-1][-1] == []
    assert cli.main(["serve", "--runs", str(tmp_path / "r"), "--host", "0.0.0.0", "--auth", "a:b"]) == 0
    assert "without a login" not in capsys.readouterr().err and served[-1][-1] == [("a", "b")]
    for args, message in (
        (["--auth", "nopassword"], "a login is USER:PASSWORD"),
        (["--auth", "a:b", "--auth", "a:c"], "the user 'a' is given twice"),
        (["--auth-file", str(tmp_path / "missing")], "cannot read --auth-file"),
    ):
        assert cli.main(["serve", "--runs", str(tmp_path / "r"), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "b:" not in err.replace("USER:PASSWORD", ""), err
