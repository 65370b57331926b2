"""The `sjc` command. Parsing and help import no torch; each subcommand imports what it runs.

User mistakes (unknown flags, bad values, prompts outside a prior's vocabulary, occupied
output folders, missing model weights) end with one message and exit status 2, never a traceback.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path
from typing import Annotated, Any

import tyro

from ...core.errors import UserError
from ..settings.config import to_json
from ..settings.parse import parse_2d, parse_generate

COMMANDS = {
    "generate": "optimise a 3D voxel field against a 2D diffusion prior and export it",
    "render": "render a run's field as a turntable or spiral video, at any resolution",
    "export": "write a run's field as a coloured mesh (glb, obj, ply) or its raw grids (npz)",
    "canvas": "optimise a 2D image with a prior's score (PAAS, naive, SDS, ...; annealed or random sigmas)",
    "sample": "draw images from a 2D prior with the deterministic Karras/EDM sampler (Heun or Euler)",
    "train-prior": "train the learned toy prior (--prior toy-learned) on toy-world renders",
    "serve": "a web page: type a prompt, watch the run, turn the mesh around, download it ([web] extra)",
    "batch": "run many generate runs (prompts x seeds) as Ray tasks, here or on a cluster; resumable",
}

USAGE = """usage: sjc COMMAND [options]

Score Jacobian Chaining: lift a 2D diffusion model into a 3D asset.

commands:
{commands}

`sjc COMMAND --help` lists a command's options. Quick start:
  sjc generate "a red and blue cube"
"""


def _print_dry_run(cfg: Any) -> int:
    print(to_json(dataclasses.replace(cfg, dry_run=False)))
    return 0


def _set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def _cannot_write(err: OSError, what: str) -> UserError:
    """e.g. no space left on the device, or a folder that cannot be written."""
    return UserError(f"cannot write {err.filename or what}: {err.strerror or err}")


def cmd_generate(argv: list[str]) -> int:
    cfg = parse_generate(argv)
    if cfg.dry_run:
        from ..runs.generate import default_run_dir

        return _print_dry_run(dataclasses.replace(cfg, out=cfg.out or str(default_run_dir(cfg))))
    from ...core.fit import NonFiniteError
    from ..runs.generate import generate
    from ..runs.interrupt import Interrupted

    _set_threads(cfg.threads)
    try:
        result = generate(cfg)
    except OSError as err:
        raise _cannot_write(err, "the run folder") from None
    except (NonFiniteError, Interrupted) as err:  # not a usage mistake: the run's own status
        print(f"sjc generate: {err}", file=sys.stderr)
        return err.exit_code if isinstance(err, Interrupted) else 1
    print(f"run folder: {result.run_dir}")
    for name, path in result.files.items():
        print(f"  {name:10s} {path}")
    if result.metrics:
        m = result.metrics
        if "object" in m:
            print(f"the picture shows: {m['object']} (quality below against it)")
        print(
            f"quality: 3D IoU {m['iou_3d']:.3f} (closed {m['iou_3d_closed']:.3f}, "
            f"constrained {m['iou_3d_constrained']:.3f}), "
            f"silhouette IoU {m['silhouette_iou']:.3f}, "
            f"PSNR {m['psnr']:.2f} dB, shape {'matched' if m['shape_accuracy'] else 'NOT matched'}"
        )
    return 0


def cmd_render(argv: list[str]) -> int:
    from ..settings.config import RenderConfig

    rc = tyro.cli(RenderConfig, args=argv, prog="sjc render", description=RenderConfig.__doc__)
    return _asset_command("render", rc)


def cmd_export(argv: list[str]) -> int:
    from ..settings.config import ExportMeshConfig

    ec = tyro.cli(ExportMeshConfig, args=argv, prog="sjc export", description=ExportMeshConfig.__doc__)
    return _asset_command("export", ec)


def _asset_command(name: str, cfg: Any) -> int:
    """Run `sjc render` / `sjc export` on a run folder."""
    from .render_export import export_run, render_run

    _set_threads(cfg.threads)
    try:
        files = (render_run if name == "render" else export_run)(cfg)
    except OSError as err:
        raise _cannot_write(err, "the output") from None
    for key, path in files.items():
        print(f"  {key:10s} {path}")
    return 0


def _run_2d(command: str, argv: list[str]) -> int:
    cfg = parse_2d(command, argv)
    from .run2d import default_out, run_canvas, run_sample

    if cfg.dry_run:
        return _print_dry_run(dataclasses.replace(cfg, out=cfg.out or str(default_out(cfg))))

    _set_threads(cfg.threads)
    try:
        result = (run_canvas if command == "canvas" else run_sample)(cfg)
    except OSError as err:
        raise _cannot_write(err, "the output folder") from None
    print(f"output folder: {result.out}")
    for name, path in result.files.items():
        print(f"  {name:10s} {path}")
    if q := result.summary["quality"]:
        hits = sum(p == q["prompt"] for p in q["nearest_prompt"])
        print(
            f"quality: prompt accuracy {q['prompt_accuracy']:.0%} ({hits}/{len(q['nearest_prompt'])} images nearest "
            f"to a render of {q['prompt']!r}), distance to the nearest render {q['mean_nearest_rmse']:.4f} RMS"
        )
    return 0


def cmd_canvas(argv: list[str]) -> int:
    return _run_2d("canvas", argv)


def cmd_sample(argv: list[str]) -> int:
    return _run_2d("sample", argv)


def cmd_train_prior(argv: list[str]) -> int:
    from ..settings.train_prior_config import TrainPriorConfig, validate_train_prior

    about = inspect.cleandoc(TrainPriorConfig.__doc__ or "")
    cfg = tyro.cli(TrainPriorConfig, args=argv, prog="sjc train-prior", description=about)
    validate_train_prior(cfg)
    if cfg.dry_run:
        return _print_dry_run(cfg)
    import shlex

    from ...core.fit import pick_device
    from ..runs.interrupt import Interrupted
    from .train_prior import train_prior

    _set_threads(cfg.threads)
    try:
        summary = train_prior(cfg, pick_device(cfg.device))
    except OSError as err:
        raise _cannot_write(err, cfg.out) from None
    except Interrupted as err:
        print(f"sjc train-prior: {err}", file=sys.stderr)
        return err.exit_code
    weights = f"{cfg.out}/weights.safetensors"
    if summary.get("stopped"):
        print(f"stopped at the time limit after step {summary['step']}; continue with --resume")
    print(f"weights: {weights} ({summary['parameters']:,} parameters, step {summary.get('step')})")
    if bands := summary.get("bands"):
        print("last loss per sigma band: " + ", ".join(f"{k} {v:.4f}" for k, v in bands.items()))
    print(f'use them with: sjc generate "{cfg.prompts[0]}" --prior toy-learned --toy.weights {shlex.quote(weights)}')
    return 0


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Serve a web page to run sjc generate from a browser: type a prompt, watch the field form, turn the mesh
    around and download it; the runs folder's gallery opens past runs. Needs the [web] extra.

    By default the page is reachable from this machine only. --host 0.0.0.0 exposes it to every machine
    that can reach this one: anyone can then start runs (within --max-grid, --max-steps, --max-threads, using
    this machine's CPU/GPU), and read and download every run in --runs, unless --auth or --auth-file asks for a
    login (gradio's own: the page, its API and its files all need it; served over plain HTTP, so put HTTPS in
    front of a page reached over the internet)."""

    host: str = "127.0.0.1"
    """Address to listen on: 127.0.0.1 is this machine only; 0.0.0.0 is every network (see above)."""
    port: int = 7860
    """Port to listen on."""
    runs: str = "runs"
    """Folder of the runs: new runs are written here, the gallery lists it, and the page serves files from
    nowhere else."""
    concurrency: int = 1
    """Runs at a time; more visitors wait in a queue that shows their place. One suits a CPU machine."""
    allow_sd_on_cpu: bool = False
    """Offer the 'sd' and 'zero123' priors without a GPU (minutes a step)."""
    max_grid: int = 64
    """The largest grid (voxels a side) a visitor may ask for, in a new run or a resume."""
    max_steps: int = 20_000
    """The most steps a visitor may ask for."""
    max_threads: int | None = None
    """The most CPU threads a run may use; None: this machine's CPU count."""
    max_upload_mb: float = 10.0
    """The largest file gradio's upload route accepts, in MB (the page itself asks for no uploads)."""
    auth: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """A login the page accepts, USER:PASSWORD; repeat the flag for more (a password on the command line shows in
    the process list: --auth-file keeps it out)."""
    auth_file: str | None = None
    """A file of logins, one USER:PASSWORD a line (blank lines and lines starting with # are skipped)."""
    models: tuple[str, ...] = ()
    """The models the page offers for 'sd', 'pixel' and 'zero123', each NAME=MODEL or MODEL (a diffusers folder or a
    model id in the Hugging Face cache; nothing is downloaded). Visitors see the names only. None listed: the
    presets'."""


def serve_models(entries: tuple[str, ...]) -> dict[str, str]:
    """--models as {name shown: model}; a bare MODEL is shown by its last path part."""
    models: dict[str, str] = {}
    for entry in entries:
        name, sep, model = entry.partition("=")
        name, model = (
            (name.strip(), model.strip()) if sep else (entry.strip().rstrip("/").split("/")[-1], entry.strip())
        )
        if not name or not model:
            raise UserError(f"--models takes NAME=MODEL or MODEL, got {entry!r}")
        if name in models:
            raise UserError(f"--models names {name!r} twice; give each model a name of its own with NAME=MODEL")
        models[name] = model
    return models


def serve_logins(entries: tuple[str, ...], auth_file: str | None) -> list[tuple[str, str]]:
    """--auth and --auth-file as (user, password) pairs; UserError naming a malformed entry or an unreadable file."""
    lines = [(f"--auth {e.split(':', 1)[0]}:...", e) for e in entries]
    if auth_file is not None:
        try:
            text = Path(auth_file).read_text()
        except OSError as err:
            raise UserError(f"cannot read --auth-file {auth_file}: {err.strerror or err}") from None
        lines += [
            (f"{auth_file} line {n}", line.strip())
            for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.strip().startswith("#")
        ]
    logins: dict[str, str] = {}
    for where, entry in lines:
        user, sep, password = entry.partition(":")
        if not sep or not user.strip() or not password:
            raise UserError(f"{where}: a login is USER:PASSWORD with neither part empty")
        if user.strip() in logins:
            raise UserError(f"{where}: the user {user.strip()!r} is given twice")
        logins[user.strip()] = password
    if auth_file is not None and not logins:
        raise UserError(f"--auth-file {auth_file} holds no USER:PASSWORD line")
    return list(logins.items())


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def cmd_serve(argv: list[str]) -> int:
    cfg = tyro.cli(ServeConfig, args=argv, prog="sjc serve", description=inspect.cleandoc(ServeConfig.__doc__ or ""))
    if cfg.concurrency < 1:
        raise UserError(f"--concurrency must be at least 1, got {cfg.concurrency}")
    if not 0 < cfg.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {cfg.port}")
    for flag, value in (
        ("--max-grid", cfg.max_grid),
        ("--max-steps", cfg.max_steps),
        ("--max-threads", cfg.max_threads),
    ):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if not cfg.max_upload_mb > 0:
        raise UserError(f"--max-upload-mb must be positive, got {cfg.max_upload_mb}")
    from ..web.jobs import Limits
    from ..web.page import serve

    limits = Limits(cfg.max_grid, cfg.max_steps, cfg.max_threads, serve_models(cfg.models))
    logins = serve_logins(cfg.auth, cfg.auth_file)
    if not logins and cfg.host not in LOOPBACK and not cfg.host.startswith("127."):
        print(
            f"warning: serving on {cfg.host} without a login: anyone who can reach this machine can start runs and "
            "download every run in --runs; add --auth USER:PASSWORD or --auth-file FILE",
            file=sys.stderr,
            flush=True,
        )
    try:
        serve(cfg.runs, cfg.host, cfg.port, cfg.concurrency, cfg.allow_sd_on_cpu, limits, cfg.max_upload_mb, logins)
    except OSError as err:
        raise UserError(f"cannot serve on {cfg.host}:{cfg.port}: {err.strerror or err}") from None
    return 0


def cmd_batch(argv: list[str]) -> int:
    """`sjc batch`: the jobs as Ray tasks (Ray is imported inside, so the core install stays light)."""
    from ..batch.jobs import HELP

    if "-h" in argv or "--help" in argv:
        print(HELP)
        return 0
    from ..batch.runner import run_batch

    try:
        return run_batch(argv)
    except OSError as err:
        raise _cannot_write(err, "the batch folder") from None


HANDLERS = {
    "generate": cmd_generate,
    "render": cmd_render,
    "export": cmd_export,
    "canvas": cmd_canvas,
    "sample": cmd_sample,
    "train-prior": cmd_train_prior,
    "serve": cmd_serve,
    "batch": cmd_batch,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.format(commands="\n".join(f"  {k:10s} {v}" for k, v in COMMANDS.items())))
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import version

        print(f"sjc {version('sjc')}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in HANDLERS:
        print(f"sjc: unknown command {command!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return HANDLERS[command](rest)
    except UserError as err:
        print(f"sjc {command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
