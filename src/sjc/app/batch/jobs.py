"""What `sjc batch` runs: its options, the job file (prompts, or runs with seeds and overrides), and each job
resolved to the `sjc generate` configuration of its run folder. Imports no torch and no Ray, so a mistake in
the job file is reported before anything starts.

Job files:
- `.txt` (or any other name): one prompt a line; blank lines and lines starting with `#` are skipped.
- `.toml`: `[[runs]]` tables; `.json`: a list of objects, or `{"runs": [...]}`. Each run has `prompt` and may
  have `seed`, `name` (its folder under --out), `image` (a reference picture for image-to-3D, a path relative to
  the job file; with `--prior toy-image` it replaces the prompt) and `overrides`: a table of `sjc generate` flags
  without their dashes (`{"train.steps" = 500, "toy.view-conditioning" = false}`) or a list of arguments
  (`["--optim.lr", "0.05"]`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.errors import UserError
from ...priors import NETWORK_PRIORS
from ..settings.config import GenerateConfig, check_prompt, picture_title, slug
from .report import REPORT_FILES

JOB_KEYS = ("prompt", "seed", "name", "image", "overrides")
# Flags of `sjc generate` that `sjc batch` sets itself for every run.
OWN_FLAGS = {
    "--out": "--out of sjc batch is the folder that holds every run folder",
    "--resume": "sjc batch resumes unfinished runs by itself: run the same command again",
    "--overwrite": "sjc batch never replaces a run; choose another --out to start over",
    "--dry-run": "sjc batch has no --dry-run",
    "--threads": "each run's threads are its --cpus-per-run",
}


class JobFileError(UserError, ValueError):
    """A job file that cannot be read, or a job in it that is not one."""


@dataclass(frozen=True)
class BatchOptions:
    """The options of `sjc batch` itself; `generate` holds every other argument, passed on to each run."""

    jobs: str | None = None
    suite: bool = False
    seeds: tuple[int, ...] | None = None
    out: str = "runs/batch"
    address: str | None = None
    cpus_per_run: int = 1
    gpus_per_run: float | None = None
    retries: int = 3
    generate: tuple[str, ...] = ()


@dataclass(frozen=True)
class Job:
    """One run of the batch as written in the job file (seed None: the preset's, or --seed's)."""

    prompt: str
    seed: int | None = None
    name: str | None = None
    overrides: tuple[str, ...] = ()
    where: str = ""  # "jobs.toml, run 3": how messages name it
    image: str | None = None  # image-to-3D: the reference picture (absolute, or relative to the working folder)

    @property
    def title(self) -> str:
        """What names the job's folder: its prompt, else its picture's file name."""
        return self.prompt or (picture_title(self.image) if self.image else "")


@dataclass
class ResolvedJob:
    """A job with its run folder and `sjc generate` configuration, or the one-line reason it cannot run."""

    job: Job
    name: str
    run_dir: Path
    config: GenerateConfig | None = None
    error: str | None = None
    gpus: float = 0.0
    seed: int | None = None  # the run's seed, also for a job that cannot run (its folder name has it)


HELP = """usage: sjc batch (JOBS | --suite) [--seeds 0,1,2] [--out DIR] [--address ADDR] [--cpus-per-run N]
                 [--gpus-per-run N] [--retries N] [generate options ...]

Run many `sjc generate` runs as Ray tasks, on this machine or a Ray cluster. Each run writes its normal run
folder under --out; running the same command again skips finished runs and resumes unfinished ones from their
checkpoints. Ctrl-C stops every run at the end of its step with a checkpoint. At the end: summary.csv,
summary.md and index.html (a gallery that opens from disk) in --out.

JOBS (the first argument): a text file of prompts (one a line), or a .toml / .json file of runs, each
with a prompt and optionally a seed, a name (its folder), an image (image-to-3D: a picture, relative to the
job file) and overrides (generate flags), e.g.
  [[runs]]
  prompt = "a red and blue cube"
  seed = 1
  overrides = {"train.steps" = 500}

options:
  --suite             the 10 prompts of the toy quality suite instead of a job file
  --seeds S,S,...     run each job once per seed (jobs that name their seed keep it)
  --out DIR           folder of the run folders and the summaries (default runs/batch); on a cluster it must
                      be storage every node sees, at the same path
  --address ADDR      join this Ray cluster (e.g. 10.0.0.1:6379, or 'auto'); default: start Ray on this
                      machine (loopback only, no dashboard, sized to its cores)
  --cpus-per-run N    CPUs (and PyTorch threads) each run takes (default 1)
  --gpus-per-run N    GPUs each run takes (default 1 for priors that need a GPU: sd, pixel, --device cuda;
                      else 0, and the run stays on the CPU)
  --retries N         times a run whose worker died (process killed, node lost) is started again, from its
                      last checkpoint (default 3)
  generate options    any `sjc generate` option but --out, --resume, --overwrite, --dry-run and --threads,
                      e.g. --preset tiny --steps 500 (job overrides come after them)
"""


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    if not seeds:
        raise UserError(f"--seeds takes comma-separated integers, e.g. 0,1,2; got {text!r}")
    return seeds


class _Parser(argparse.ArgumentParser):
    """argparse that raises UserError (one line, status 2) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message)


def parse_options(argv: list[str]) -> BatchOptions:
    """Split argv into the batch's own options and the `sjc generate` options passed on to every run."""
    # JOBS comes first: after it, a bare word is the value of a generate flag (argparse would take it as JOBS).
    jobs, argv = (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else (None, argv)
    parser = _Parser(prog="sjc batch", add_help=False, allow_abbrev=False)
    parser.add_argument("--suite", action="store_true")
    parser.add_argument("--seeds", type=_seeds, default=None)
    parser.add_argument("--out", default="runs/batch")
    parser.add_argument("--address", default=None)
    parser.add_argument("--cpus-per-run", type=int, default=1)
    parser.add_argument("--gpus-per-run", type=float, default=None)
    parser.add_argument("--retries", type=int, default=3)
    known, rest = parser.parse_known_args(argv)
    for arg in rest:
        flag = arg.split("=", 1)[0]
        if flag in OWN_FLAGS:
            raise UserError(f"{flag} cannot be given to sjc batch: {OWN_FLAGS[flag]}")
    known.jobs = jobs
    if jobs is not None and known.suite:
        raise UserError("give a job file or --suite, not both")
    if jobs is None and not known.suite:
        raise UserError("give a job file first (a text file of prompts, or .toml / .json runs), or --suite")
    if known.cpus_per_run < 1:
        raise UserError(f"--cpus-per-run must be at least 1, got {known.cpus_per_run}")
    if known.gpus_per_run is not None and known.gpus_per_run < 0:
        raise UserError(f"--gpus-per-run must not be negative, got {known.gpus_per_run:g}")
    if known.retries < 0:
        raise UserError(f"--retries must not be negative, got {known.retries}")
    names = ("jobs", "suite", "seeds", "out", "address", "cpus_per_run", "gpus_per_run", "retries")
    return BatchOptions(**{k: getattr(known, k) for k in names}, generate=tuple(rest))


# --- job files -------------------------------------------------------------------------------------------
def load_jobs(options: BatchOptions) -> list[Job]:
    """The jobs of the file (or the suite), each seed of --seeds applied to the jobs that name none."""
    if options.suite:
        from ..settings.train_prior_config import TrainPriorConfig

        jobs = [Job(p, where=f"suite prompt {i}") for i, p in enumerate(TrainPriorConfig().prompts, 1)]
    else:
        jobs = read_job_file(Path(str(options.jobs)))
    if not jobs:
        raise JobFileError(f"{options.jobs} holds no jobs")
    if options.seeds is None:
        return jobs
    seeds = options.seeds
    return [
        job for j in jobs for job in ([j] if j.seed is not None else [dataclasses.replace(j, seed=s) for s in seeds])
    ]


def read_job_file(path: Path) -> list[Job]:
    """Jobs of a .toml, .json or plain-text file; JobFileError naming the file and what is wrong."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise JobFileError(f"cannot read the job file {path}: {getattr(err, 'strerror', None) or err}") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise JobFileError(f"{path} is not valid TOML: {err}") from None
        return _jobs_from_data(data, path)
    if suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as err:
            raise JobFileError(f"{path} is not valid JSON: {err}") from None
        return _jobs_from_data(data, path)
    return [
        Job(line.strip(), where=f"{path}:{n}")
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _jobs_from_data(data: Any, path: Path) -> list[Job]:
    runs = data.get("runs") if isinstance(data, dict) else data
    if isinstance(data, dict) and set(data) - {"runs"}:
        raise JobFileError(f"{path}: unknown key {sorted(set(data) - {'runs'})[0]!r}; the runs go in 'runs'")
    if not isinstance(runs, list):
        raise JobFileError(f'{path} must hold a list of runs ([[runs]] tables in TOML, a list or {{"runs": [...]}})')
    return [_job(run, f"{path}, run {i}", path.parent) for i, run in enumerate(runs, 1)]


def _job(run: Any, where: str, folder: Path = Path()) -> Job:
    if isinstance(run, str):
        return Job(run, where=where)
    if not isinstance(run, dict):
        raise JobFileError(f"{where}: a run is a table with a prompt, got {run!r}")
    unknown = set(run) - set(JOB_KEYS)
    if unknown:
        raise JobFileError(f"{where}: unknown key {sorted(unknown)[0]!r}; a run has {', '.join(JOB_KEYS)}")
    prompt, seed, name = run.get("prompt", ""), run.get("seed"), run.get("name")
    if not isinstance(prompt, str):
        raise JobFileError(f"{where}: prompt must be text, got {prompt!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise JobFileError(f"{where}: seed must be an integer, got {seed!r}")
    if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name) or name in (".", "..")):
        raise JobFileError(f"{where}: name must be a folder name (letters, digits, '.', '-', '_'), got {name!r}")
    image = run.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise JobFileError(f"{where}: image must be the path of a picture, got {image!r}")
    image = str(folder / image) if image is not None else None  # relative to the job file
    return Job(prompt, seed, name, _override_args(run.get("overrides", {}), where), where, image)


def _override_args(overrides: Any, where: str) -> tuple[str, ...]:
    """`sjc generate` arguments of a run's overrides: a list of arguments, or a table of flag -> value."""
    if isinstance(overrides, list) and all(isinstance(a, str) for a in overrides):
        return tuple(overrides)
    if not isinstance(overrides, dict):
        raise JobFileError(f"{where}: overrides must be a table of flag = value or a list of arguments")
    args: list[str] = []
    for key, value in overrides.items():
        flag = key.lstrip("-").replace("_", "-")
        if isinstance(value, bool):  # tyro's --x.flag / --x.no-flag
            head, _, tail = flag.rpartition(".")
            args.append(f"--{flag}" if value else f"--{head + '.' if head else ''}no-{tail}")
        elif isinstance(value, list):
            args += [f"--{flag}", *(str(v) for v in value)]
        else:
            args += [f"--{flag}", "None" if value is None else str(value)]
    return tuple(args)


# --- resolving jobs into run configurations ----------------------------------------------------------------
def resolve_jobs(jobs: list[Job], options: BatchOptions) -> list[ResolvedJob]:
    """Each job's run folder and configuration; a job that cannot run carries its one-line message instead,
    so one bad job fails alone. Names given in the job file are kept as they are (JobFileError for a reserved or
    repeated one); the others are made from prompt and seed, with -2, -3, ... where taken."""
    default_seed = check_generate_options(jobs[0], options).train.seed
    out, taken, resolved = Path(options.out).absolute(), explicit_names(jobs), []
    for job in jobs:
        try:
            cfg = job_config(job, options, out / "_")
        except UserError as err:
            seed = default_seed if job.seed is None else job.seed
            name = job.name or _unique(f"{slug(job.title)}-seed{seed}", taken)
            resolved.append(ResolvedJob(job, name, out / name, error=str(err), seed=seed))
            continue
        name = job.name or _unique(f"{slug(job.title)}-seed{cfg.train.seed}", taken)
        run_dir = out / name
        cfg = absolute_paths(dataclasses.replace(cfg, out=str(run_dir)))
        gpus = options.gpus_per_run if options.gpus_per_run is not None else float(needs_gpu(cfg))
        if not gpus and cfg.device == "auto":
            cfg = dataclasses.replace(cfg, device="cpu")  # no GPU asked for: stay off any the node has
        resolved.append(ResolvedJob(job, name, run_dir, cfg, gpus=gpus, seed=cfg.train.seed))
    return resolved


def explicit_names(jobs: list[Job]) -> set[str]:
    """The run names the job file gives; JobFileError for one of sjc batch's own files (the summaries, the
    gallery, hidden names such as the stop file) or one given twice."""
    where: dict[str, str] = {}
    for job in jobs:
        if job.name is None:
            continue
        if job.name.startswith(".") or job.name.lower() in REPORT_FILES:
            raise JobFileError(
                f"{job.where}: the name {job.name!r} is taken by sjc batch's own files "
                f"({', '.join(REPORT_FILES)}, and names starting with '.'); choose another"
            )
        if job.name in where:
            raise JobFileError(f"{job.where}: the name {job.name!r} is already the name of {where[job.name]}")
        where[job.name] = job.where
    return set(where)


def check_generate_options(job: Job, options: BatchOptions) -> GenerateConfig:
    """The generate options given to every run, parsed alone (with the first job's prompt, unchecked): an unknown
    flag or preset there is the whole command's mistake (status 2), not every job's."""
    import tyro

    from ..settings.parse import preset_then_flags
    from ..settings.presets import preset

    argv = [job.prompt, *options.generate]
    known = preset_then_flags(argv)
    return _quiet_tyro(lambda a: tyro.cli(GenerateConfig, args=a, default=preset(known.prior, known.preset)), argv)


def absolute_paths(cfg: GenerateConfig) -> GenerateConfig:
    """A Ray worker's working folder is not the driver's: the local paths of a run are made absolute."""
    toy = cfg.toy
    for key in ("cache_dir", "weights"):
        value = getattr(toy, key)
        if value and not Path(value).is_absolute():
            toy = dataclasses.replace(toy, **{key: str(Path(value).absolute())})
    image = cfg.image
    if image.path and not Path(image.path).is_absolute():
        image = dataclasses.replace(image, path=str(Path(image.path).absolute()))
    return dataclasses.replace(cfg, toy=toy, image=image)


def _unique(name: str, taken: set[str]) -> str:
    """Folder names in job order: a repeated one gets -2, -3, ..., the same on every invocation."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    taken.add(candidate)
    return candidate


def needs_gpu(cfg: GenerateConfig) -> bool:
    """The diffusers networks (Stable Diffusion, the pixel models, Zero-1-to-3) are GPU work; so is any run told
    --device cuda."""
    return cfg.prior in NETWORK_PRIORS or cfg.device.startswith("cuda")


def job_config(job: Job, options: BatchOptions, run_dir: Path) -> GenerateConfig:
    """The `sjc generate` configuration of a job (UserError with the command's own message otherwise)."""
    from ..settings.parse import parse_generate

    argv = [job.prompt, *options.generate, *job.overrides]
    if job.seed is not None:
        argv += ["--seed", str(job.seed)]
    if job.image is not None:
        argv += ["--image", job.image]
    argv += ["--out", str(run_dir), "--threads", str(options.cpus_per_run)]
    cfg = _quiet_tyro(parse_generate, argv)
    check_prompt(cfg)
    if cfg.image.path is not None:  # an unreadable picture fails its job now, in one line
        from ..runs.picture import check_picture

        check_picture(cfg.image)
    return cfg


def _quiet_tyro(parse: Any, argv: list[str]) -> GenerateConfig:
    """tyro reports a bad flag in a box on stderr and exits; here it becomes one UserError line."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            return parse(argv)
    except SystemExit:
        raise UserError(tyro_message(captured.getvalue()) or f"invalid arguments: {' '.join(argv)}") from None


def tyro_message(text: str) -> str:
    """The message inside tyro's error box (drawn with box characters on a terminal, dashes otherwise), without
    the frame, the box's title and the pointer to --help."""
    lines = []
    for raw in text.splitlines():
        line = raw.strip().strip("│╭╰╮╯").strip()
        if line and not set(line) <= set("─-═ ") and "helptext" not in line:
            lines.append(line)
    if len(lines) > 1 and lines[1].startswith(lines[0].split("─")[0].strip()):
        lines = lines[1:]  # the title repeats the message's start
    return "; ".join(lines)
