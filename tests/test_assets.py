"""`sjc render` and `sjc export` on run folders: a toy run with two checkpoints and a tiny-SD latent run."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh

import tiny_sd  # sets HF_HUB_OFFLINE before diffusers is imported
from fields import save_run, sphere_field
from sjc.app.commands import cli
from sjc.app.commands.render_export import decoder_for, upsampling
from sjc.app.settings.presets import preset
from sjc.outputs.mesh import GREY
from sjc.priors.sd import StableDiffusionPrior, load_components


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A red-front, blue-back sphere: radius 0.3 at step 100, 0.5 at step 200."""
    cfg = dataclasses.replace(preset("toy", "tiny"), prompt="a red and blue cube")
    run_dir = tmp_path_factory.mktemp("runs") / "sphere"
    return save_run(run_dir, cfg, {100: sphere_field(24, radius=0.3), 200: sphere_field(24)})


def _main(args, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _front_back(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    colours, z = np.asarray(mesh.visual.vertex_colors), mesh.vertices[:, 2]
    return colours[z > 0.1], colours[z < -0.1]


def test_export_writes_a_coloured_glb_and_states_the_default_threshold(toy_run, capsys):
    code, out, _ = _main(["export", toy_run], capsys)
    assert code == 0
    assert "alpha 0.5 (the run's export.mesh_threshold, the default" in out and "colours: field" in out
    mesh = trimesh.load(toy_run / "mesh.glb", force="mesh")
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert mesh.is_watertight and abs(np.median(radii) - 0.5) < 0.05
    front, back = _front_back(mesh)
    assert (front[:, 0] > 200).mean() > 0.95 and (back[:, 2] > 200).mean() > 0.95


def test_export_formats_decimation_and_an_older_step(toy_run, tmp_path, capsys):
    code, out, _ = _main(
        ["export", toy_run, "--step", 100, "--mesh", tmp_path / "small.ply", "--max-faces", 200], capsys
    )
    assert code == 0, out
    small = trimesh.load(tmp_path / "small.ply", force="mesh")
    assert len(small.faces) <= 200 and abs(np.median(np.linalg.norm(small.vertices, axis=1)) - 0.3) < 0.05
    assert _main(["export", toy_run, "--format", "obj", "--mesh", tmp_path / "plain"], capsys)[0] == 0
    assert len(trimesh.load(tmp_path / "plain.obj", force="mesh").vertices) > 100
    # A bare name lands in the run folder, wherever the command runs; ./name where it says.
    assert _main(["export", toy_run, "--mesh", "chair.obj", "--max-faces", 200], capsys)[0] == 0
    assert (toy_run / "chair.obj").is_file() and not Path("chair.obj").exists()
    assert _main(["export", toy_run, "--format", "npz", "--resolution", 16], capsys)[0] == 0
    with np.load(toy_run / "field.npz") as grids:
        assert grids["density"].shape == (16, 16, 16) and grids["features"].shape == (3, 16, 16, 16)
        assert grids["aabb"].shape == (2, 3)


def test_render_writes_colour_gif_mp4_and_depth_video(toy_run, tmp_path, capsys):
    video = tmp_path / "spin.mp4"
    args = ["render", toy_run, "--frames", 3, "--size", 24, "--hires", "--subpixels", 2, "--video", video]
    code, out, _ = _main(args, capsys)
    assert code == 0 and "4 rays per pixel" in out
    assert video.stat().st_size > 0 and (tmp_path / "spin-depth.mp4").stat().st_size > 0
    frames = iio.imread(tmp_path / "spin.gif", index=None)
    assert frames.shape == (3, 24, 24, 3)
    assert frames[0, 12, 12, 0] > 150 and frames[0, 12, 12, 2] < 100  # the first frame faces the red front
    assert _main(["render", toy_run, "--frames", 3, "--size", 16, "--path", "spiral", "--step", 100], capsys)[0] == 0
    assert iio.imread(toy_run / "render.gif", index=None).shape == (3, 16, 16, 3)


@pytest.mark.parametrize("command", ["render", "export"])
def test_a_folder_that_is_not_a_run_exits_2_with_one_line(command, tmp_path, capsys):
    for folder, message in [(tmp_path, "holds no checkpoints"), (tmp_path / "missing", "is not a folder")]:
        code, _, err = _main([command, folder], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    code, _, err = _main([command], capsys)
    assert code == 2 and "give a run folder" in err


def test_the_installed_command_exits_with_status_2(tmp_path):
    # One real process for the exit status (cli.main's return value, tested above for both commands).
    out = subprocess.run(
        [sys.executable, "-m", "sjc", "export", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    expected = f"{tmp_path} holds no checkpoints (is it a run folder made by `sjc generate`?)"
    assert out.stderr.strip() == f"sjc export: error: {expected}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "--step", "7"], "no checkpoint at step 7; available steps: 100, 200"),
        (["export", "--mesh", "m.ply", "--format", "glb"], "has the extension .ply but --format is glb"),
        (["export", "--mesh", "m.stl"], "unknown extension"),
        (["export", "--threshold", "0.999"], "largest voxel alpha"),
        (["export", "--max-faces", "2"], "--max-faces must be at least 4"),
        (["render", "--frames", "0"], "--frames must be at least 1"),
        (["render", "--video", "spin.avi"], "--video must end in .mp4"),
    ],
)
def test_user_mistakes_exit_2_with_the_fix(toy_run, args, message, capsys):
    code, _, err = _main([args[0], toy_run, *args[1:]], capsys)
    assert code == 2 and message in err and "Traceback" not in err, err


@pytest.mark.parametrize("command", ["render", "export"])
def test_help_documents_the_flags_without_importing_torch(command):
    code = (
        "import sys\nfrom sjc.app.commands import cli\n"
        f"try:\n    cli.main([{command!r}, '--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout[-500:]
    assert "RUN" in out.stdout and "--step" in out.stdout
    flag = "--hires" if command == "render" else "--max-faces"
    assert flag in out.stdout


# --- latent fields: a tiny random Stable Diffusion's VAE decodes them ------------------------
@pytest.fixture(scope="module")
def sd_run(tmp_path_factory):
    model = tiny_sd.build_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "model")
    base = preset("sd", "tiny")
    cfg = dataclasses.replace(base, prompt="a hamburger", sd=dataclasses.replace(base.sd, model=str(model)))
    run_dir = tmp_path_factory.mktemp("runs") / "burger"
    return save_run(run_dir, cfg, {20: sphere_field(16, channels=4)}), cfg


def test_the_latent_decoder_alone_decodes_as_the_prior_does(sd_run):
    _, cfg = sd_run
    latent = sphere_field(16, channels=4)
    decode = decoder_for(cfg, latent, torch.device("cpu"))
    prior = StableDiffusionPrior(load_components(cfg.sd.model, "cpu", torch.float32), cfg.prompt, resolution=64)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(decode(x), prior.decode(x))
    assert upsampling(decode, latent) == 8 and decoder_for(cfg, sphere_field(8), torch.device("cpu")) is None


def test_export_and_render_a_latent_run_through_the_vae(sd_run, tmp_path, capsys):
    run_dir, _ = sd_run
    code, out, err = _main(["export", run_dir, "--bake-size", 16], capsys)
    assert code == 0, err
    assert "baking vertex colours" in out and "colours: baked" in out
    colours = np.asarray(trimesh.load(run_dir / "mesh.glb", force="mesh").visual.vertex_colors)
    assert (colours != np.array(GREY)).any(axis=1).mean() > 0.9 and colours[:, :3].std() > 0
    code, out, err = _main(["render", run_dir, "--frames", 2, "--size", 64, "--hires", "--subpixels", 2], capsys)
    assert code == 0, err
    assert iio.imread(run_dir / "render.gif", index=None).shape == (2, 64, 64, 3)  # 8x8 latents, decoded 8x
    code, _, err = _main(["render", run_dir, "--size", 60], capsys)
    assert code == 2 and "multiple of 8" in err
