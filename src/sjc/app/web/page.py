"""`sjc serve`: a web page (gradio) to type a prompt, watch the field form, turn the mesh around and download it.

The page is a thin layer over `web.jobs`: the form becomes a `GenerateConfig` through the command line's own
presets and checks, each run is a `web.jobs.Job` polled twice a second, and every file the page shows or
serves comes from the runs folder (gradio's own cache is put inside it too, under .web/).
"""

import contextlib
import html
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...core.errors import UserError
from ..settings.config import markdown_text
from .jobs import (
    EXAMPLE_PROMPTS,
    PRESETS,
    SCORING,
    WEB_DIR,
    Form,
    Job,
    Limits,
    RunInfo,
    available_priors,
    form_config,
    list_runs,
    metrics_table,
    open_run,
    preset_values,
    resume_config,
    whole_number,
    zip_run,
)

POLL = 0.5  # seconds between the page's updates of a running run
CAPTION_SEP = " · "  # between a run's name and its status in the gallery's captions
CSS = """
.sjc-bar { height: 14px; border-radius: 7px; background: var(--neutral-200); overflow: hidden; }
.sjc-bar > div { height: 100%; background: var(--color-accent); transition: width 0.3s; }
.sjc-progress-text { font-family: var(--font-mono); font-size: 0.9em; margin-top: 4px; }
"""
INTRO = """# sjc: text to 3D by Score Jacobian Chaining
Type a prompt, press **Generate**, and watch a voxel field take shape under a 2D diffusion prior's score.
The toy priors need nothing downloaded: their world has ten shapes in eight colours (try an example below),
and since the true object is known, each finished run is measured against it. Or start from a picture: upload
one under **Image to 3D** (with the toy-image prior, the picture alone says what to make)."""


def _gradio():
    try:
        import gradio
    except ImportError:
        raise UserError("the web page needs the [web] extra: pip install 'sjc[web]'") from None
    return gradio


def progress_html(step: int, steps: int, rate: float, eta: float | None, state: str) -> str:
    """The progress bar: step, rate and time left."""
    frac = 0.0 if steps <= 0 else min(step / steps, 1.0)
    left = "" if eta is None or state != "running" else f" · {_clock(eta)} left"
    speed = f" · {rate:.1f} steps/s" if rate > 0 and state == "running" else ""
    text = html.escape(f"{state}: step {step}/{steps}{speed}{left}")
    return (
        f'<div class="sjc-bar" data-step="{step}" data-steps="{steps}">'
        f'<div style="width:{100 * frac:.1f}%"></div></div>'
        f'<div class="sjc-progress-text" id="sjc-progress-text">{text}</div>'
    )


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"


def _enlarge(image: Any, side: int = 256) -> Any:
    """Nearest-neighbour upscale of a small render, so a 16-pixel preview is not a blur."""
    if image is None or image.shape[0] >= side:
        return image
    k = max(1, side // image.shape[0])
    return image.repeat(k, axis=0).repeat(k, axis=1)


def _plots(history: list[tuple[int, float, float]]) -> tuple[Any, Any]:
    import pandas as pd

    frame = pd.DataFrame(history or [(0, 0.0, 0.0)], columns=["step", "loss", "sigma"])
    return frame[["step", "loss"]], frame[["step", "sigma"]]


class Page:
    """The page's state: the runs folder, the priors on offer, and each visitor's current run."""

    def __init__(
        self, runs: Path, *, concurrency: int = 1, allow_sd_on_cpu: bool = False, limits: Limits | None = None
    ) -> None:
        self.runs, self.concurrency = Path(runs).resolve(), concurrency
        self.priors = available_priors(allow_sd_on_cpu)
        self.limits = limits or Limits()
        self.jobs: dict[str, list[Job]] = {}  # visitor (gradio session) -> their runs going (--concurrency)
        self._jobs_lock = threading.Lock()

    # --- views ---------------------------------------------------------------------------------
    def result_view(self, info: RunInfo | None) -> dict[str, Any]:
        gr = _gradio()
        if info is None:
            return {
                "viewer": None,
                "video": None,
                "metrics": "",
                "files": None,
                "resume": gr.update(interactive=False),
                "selected": "",
            }
        downloads = [info.files[k] for k in ("glb", "obj", "mp4") if k in info.files]
        downloads.append(zip_run(self.runs, info))
        about = f"**{markdown_text(info.prompt or info.prior)}** ({info.name}): {info.status}"
        return {
            "viewer": str(info.files["glb"]) if "glb" in info.files else None,
            "video": str(info.files["mp4"]) if "mp4" in info.files else None,
            "metrics": about + ("\n\n" + metrics_table(info.metrics) if info.metrics else ""),
            "files": [str(p) for p in downloads],
            "resume": gr.update(interactive=info.resumable, value="Resume this run" if info.resumable else "Finished"),
            "selected": info.name,
        }

    def gallery(self) -> list[tuple[str, str]]:
        """(thumbnail, caption) per run; the caption starts with the run's name, which a click opens."""
        return [(str(i.thumbnail), f"{i.name}{CAPTION_SEP}{i.status}") for i in list_runs(self.runs) if i.thumbnail]

    def open_selected(self, value: Any) -> dict[str, Any]:
        """The run a click on the gallery chose, by the name in its caption (not by its position: the gallery a
        visitor sees may be older than the runs folder)."""
        caption = value.get("caption") if isinstance(value, dict) else None
        if not isinstance(caption, str) or CAPTION_SEP not in caption:
            return {"status": "**error:** that gallery entry names no run; refresh the gallery"}
        return self.open(caption.split(CAPTION_SEP, 1)[0])

    def live(self, job: Job) -> dict[str, Any]:
        snap = job.snapshot()
        loss, sigma = _plots(snap.history)
        return {
            "progress": progress_html(snap.step, snap.steps, snap.rate, snap.eta, snap.state),
            "preview": _enlarge(snap.preview),
            "loss": loss,
            "sigma": sigma,
        }

    # --- events --------------------------------------------------------------------------------
    def run(self, form: Form, session: str) -> Iterator[dict[str, Any]]:
        """Start the form's run and stream it to the page until it ends."""
        try:
            cfg = form_config(form, self.runs, self.priors, self.limits)
        except (UserError, ValueError) as err:
            yield self._error(err)
            return
        yield from self._follow(Job(cfg), session, f"running **{markdown_text(cfg.prompt or cfg.prior)}**")

    def resume(self, name: str, threads: Any, session: str) -> Iterator[dict[str, Any]]:
        """Continue a stopped or unfinished run from its newest checkpoint."""
        try:
            info = open_run(self.runs, name)
            if info.finished:
                raise UserError(f"{name} is finished: nothing to resume")
            if info.running:
                raise UserError(f"{name} is running elsewhere; it can be resumed once it stops")
            cfg = resume_config(info.path, whole_number(threads, None, "threads"), self.limits)
        except (UserError, ValueError) as err:
            yield self._error(err)
            return
        yield from self._follow(Job(cfg), session, f"resuming **{markdown_text(info.name)}** from step {info.step}")

    def _follow(self, job: Job, session: str, title: str) -> Iterator[dict[str, Any]]:
        with self._jobs_lock:
            self.jobs.setdefault(session, []).append(job.start())
        try:
            yield {"status": title, **self.result_view(None)}
            while job.thread.is_alive():
                yield self.live(job)
                time.sleep(POLL)
            update = self.live(job)
            if job.state == "failed":
                yield {**update, **self._error(job.message)}
                return
            info = open_run(self.runs, job.run_dir.name)
            message = self._public(job.message)
            yield {**update, "status": message, "gallery": self.gallery(), **self.result_view(info)}
        finally:
            # The visitor left (tab closed, or the event cancelled): stop at the end of this step, checkpointed,
            # so no run goes on with nobody watching; it stays in the gallery and can be resumed.
            if job.thread.is_alive():
                job.stop()
                job.wait()
            with self._jobs_lock:
                mine = self.jobs.get(session, [])
                if job in mine:
                    mine.remove(job)
                if not mine:
                    self.jobs.pop(session, None)

    def _all_jobs(self, session: str | None = None) -> list[Job]:
        with self._jobs_lock:
            groups = self.jobs.values() if session is None else [self.jobs.get(session, [])]
            return [job for group in groups for job in group]

    def stop(self, session: str) -> str:
        going = [job for job in self._all_jobs(session) if job.thread.is_alive()]
        if not going:
            return "no run of yours is going"
        for job in going:
            job.stop()
        runs = "this step" if len(going) == 1 else f"this step in each of your {len(going)} runs"
        return f"stopping after {runs}; checkpoints will be saved"

    def open(self, name: str) -> dict[str, Any]:
        try:
            return {"status": "", **self.result_view(open_run(self.runs, name))}
        except UserError as err:
            return self._error(err)

    def _public(self, message: Any) -> str:
        """A message as visitors see it: no path of this server (the runs folder is named by its name only, the
        home folder as ~), shown as text, not Markdown."""
        text = str(message).replace(str(self.runs), self.runs.name).replace(str(Path.home()), "~")
        return markdown_text(text)

    def _error(self, message: Any) -> dict[str, Any]:
        return {"status": f"**error:** {self._public(message)}"}

    def close(self) -> list[tuple[str, int]]:
        """Stop every run (checkpointed) when the server shuts down; (run name, step) of those stopped."""
        jobs = [job for job in self._all_jobs() if job.thread.is_alive()]
        for job in jobs:
            job.stop()
        for job in jobs:
            job.wait()
        return [(job.run_dir.name, job.step) for job in jobs]

    # --- the gradio page -------------------------------------------------------------------------
    def build(self) -> Any:  # noqa: C901 (the page's layout, then its events)
        gr = _gradio()
        with gr.Blocks(title="sjc: text to 3D", delete_cache=(3600, int(CACHE_AGE))) as demo:
            gr.Markdown(INTRO)
            with gr.Row():
                with gr.Column(scale=2):
                    start_values = preset_values("toy", "default")
                    prompt = gr.Textbox(label="Prompt", placeholder=EXAMPLE_PROMPTS[0], elem_id="prompt")
                    gr.Examples([[p] for p in EXAMPLE_PROMPTS], inputs=prompt, label="Toy-world prompts")
                    with gr.Accordion("Image to 3D: a picture of the object (optional)", open=False):
                        picture = gr.Image(
                            type="filepath",
                            image_mode="RGBA",
                            format="png",
                            label="Reference picture (transparent or plain background)",
                            sources=["upload"],
                            height=160,
                            elem_id="picture",
                        )
                        with gr.Row():
                            image_view = gr.Textbox(
                                "0, 0",
                                label="Its camera: azimuth, elevation (degrees) [, field of view, radius]",
                                elem_id="image-view",
                            )
                            estimate = gr.Checkbox(False, label="Estimate the elevation (toy priors)")
                    with gr.Row():
                        prior = gr.Dropdown(self.priors, value="toy", label="Prior", elem_id="prior")
                        preset = gr.Radio(list(PRESETS), value="default", label="Preset", elem_id="preset")
                    with gr.Row():
                        steps = gr.Number(
                            start_values["steps"],
                            label=f"Steps (at most {self.limits.max_steps})",
                            precision=0,
                            elem_id="steps",
                        )
                        seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
                    scoring = gr.Radio(list(SCORING), value="paas", label="Scoring (PAAS, or the naive baseline)")
                    with gr.Accordion("Advanced", open=False):
                        resolution = gr.Number(
                            start_values["resolution"],
                            label=f"Grid size (voxels a side, at most {self.limits.max_grid})",
                            precision=0,
                        )
                        emptiness = gr.Number(start_values["emptiness_weight"], label="Emptiness weight")
                        guidance = gr.Number(
                            start_values["guidance_scale"], label="Guidance scale (text-conditioned priors)"
                        )
                        threads = gr.Number(
                            start_values["threads"],
                            label=f"CPU threads (at most {self.limits.threads})",
                            precision=0,
                        )
                        model = gr.Dropdown(
                            list(self.limits.models),
                            value=None,
                            label="Model (sd / pixel; none: the preset's)",
                            visible=bool(self.limits.models),
                            allow_custom_value=False,
                        )
                    with gr.Row():
                        start = gr.Button("Generate", variant="primary", elem_id="generate")
                        stop = gr.Button("Stop", variant="stop", elem_id="stop")
                with gr.Column(scale=3):
                    status = gr.Markdown(elem_id="status")
                    progress = gr.HTML(progress_html(0, 0, 0.0, None, "idle"), elem_id="progress")
                    with gr.Row():
                        preview = gr.Image(label="Latest training render", interactive=False, elem_id="preview")
                        with gr.Column():
                            loss = gr.LinePlot(x="step", y="loss", label="Loss", height=160, elem_id="loss")
                            sigma = gr.LinePlot(x="step", y="sigma", label="Sigma", height=160, elem_id="sigma")
            gr.Markdown("## Result")
            with gr.Row():
                viewer = gr.Model3D(label="Mesh: drag to turn, scroll to zoom", height=360, elem_id="viewer")
                video = gr.Video(label="Turntable", autoplay=True, loop=True, height=360, elem_id="video")
            with gr.Row():
                metrics = gr.Markdown(elem_id="metrics")
                files = gr.File(
                    label="Downloads: GLB, OBJ, MP4, the run folder (zip)",
                    file_count="multiple",
                    interactive=False,
                    elem_id="downloads",
                )
            resume = gr.Button("Resume this run", interactive=False, elem_id="resume")
            gr.Markdown(
                f"## Gallery\nThe runs in `{self.runs.name}`, from this page or `sjc generate`. Click one to open."
            )
            refresh = gr.Button("Refresh the gallery", size="sm")
            gallery = gr.Gallery(
                self.gallery(),
                columns=6,
                height=220,
                allow_preview=False,
                object_fit="contain",
                fit_columns=False,
                elem_id="gallery",
                label="Runs",
            )
            selected = gr.Textbox(visible=False)

            slots = {
                "status": status,
                "progress": progress,
                "preview": preview,
                "loss": loss,
                "sigma": sigma,
                "viewer": viewer,
                "video": video,
                "metrics": metrics,
                "files": files,
                "resume": resume,
                "gallery": gallery,
                "selected": selected,
            }
            outputs = list(slots.values())

            def emit(update: dict[str, Any], streaming: bool = False) -> list[Any]:
                if streaming:  # gradio's viewer and gallery show nothing set by a stream: `show_after` sets them
                    update = {k: v for k, v in update.items() if k not in ("viewer", "gallery")}
                return [update.get(name, gr.skip()) for name in slots]

            def show_after(name: str) -> tuple[Any, Any]:
                mesh = open_run(self.runs, name).files.get("glb") if name else None
                return (str(mesh) if mesh else None), self.gallery()

            form_inputs = [prompt, prior, preset, steps, seed, scoring, resolution, emptiness, guidance, threads, model]
            form_inputs += [picture, image_view, estimate]

            def on_run(
                prompt: str,
                prior: str,
                preset: str,
                steps: Any,
                seed: Any,
                scoring: str,
                grid_size: Any,
                emptiness_weight: Any,
                guidance_scale: Any,
                threads: Any,
                model: str,
                picture: str | None,
                image_view: str,
                estimate: bool,
                request: gr.Request,
            ):
                form = Form(
                    prompt,
                    prior,
                    preset,
                    steps,
                    seed,
                    scoring,
                    grid_size,
                    emptiness_weight,
                    guidance_scale,
                    threads,
                    model or None,
                    picture or None,
                    image_view,
                    estimate,
                )
                for update in self.run(form, request.session_hash or ""):
                    yield emit(update, streaming=True)

            def on_resume(name: str, n_threads: Any, request: gr.Request):
                for update in self.resume(name, n_threads, request.session_hash or ""):
                    yield emit(update, streaming=True)

            def on_select(event: gr.SelectData):
                return emit(self.open_selected(event.value))

            def on_preset(prior_name: str, preset_name: str) -> list[Any]:
                values = preset_values(prior_name, preset_name)
                return [values[k] for k in ("steps", "resolution", "emptiness_weight", "guidance_scale", "threads")]

            numbers = [steps, resolution, emptiness, guidance, threads]
            for chooser in (prior, preset):
                chooser.change(on_preset, [prior, preset], numbers, api_name=False, queue=False)
            queue = {"concurrency_limit": self.concurrency, "concurrency_id": "runs", "show_progress": "minimal"}
            start.click(on_run, form_inputs, outputs, api_name="generate", **queue).then(
                show_after, selected, [viewer, gallery], api_name=False, queue=False
            )
            resume.click(on_resume, [selected, threads], outputs, api_name="resume", **queue).then(
                show_after, selected, [viewer, gallery], api_name=False, queue=False
            )

            def on_stop(request: gr.Request) -> str:
                return self.stop(request.session_hash or "")

            stop.click(on_stop, None, status, api_name="stop", queue=False)
            gallery.select(on_select, None, outputs, api_name=False)
            refresh.click(lambda: self.gallery(), None, gallery, api_name="gallery")
            open_box = gr.Textbox(visible=False)
            open_box.submit(lambda name: emit(self.open(name)), open_box, outputs, api_name="open_run")
        demo.queue(default_concurrency_limit=self.concurrency)
        return demo


def serve(
    runs: Path,
    host: str = "127.0.0.1",
    port: int = 7860,
    concurrency: int = 1,
    allow_sd_on_cpu: bool = False,
    limits: Limits | None = None,
    max_upload_mb: float = 10.0,
    logins: list[tuple[str, str]] | None = None,
) -> None:
    """Serve the page until Ctrl-C or SIGTERM; runs still going are then stopped with a checkpoint. With `logins`
    ((user, password) pairs) gradio asks for one before the page, its API or its files answer."""
    _gradio()  # the missing extra, said before anything is written
    runs = Path(runs)
    runs.mkdir(parents=True, exist_ok=True)
    # gradio copies what it serves into its cache: keep that inside the runs folder too, pruned, and phone nowhere.
    cache = (runs / WEB_DIR / "cache").resolve()
    prune_cache(cache, CACHE_AGE)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(cache))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["HF_HUB_OFFLINE"] = "1"  # the page's models come from the operator's list, never from the hub
    page = Page(runs, concurrency=concurrency, allow_sd_on_cpu=allow_sd_on_cpu, limits=limits)
    demo = page.build()
    login = f", {len(logins)} login(s)" if logins else ""
    print(f"serving the runs in {page.runs} at http://{host}:{port}{login} (Ctrl-C stops)", flush=True)
    previous = _terminate_like_ctrl_c()
    try:
        demo.launch(
            server_name=host,
            server_port=port,
            allowed_paths=[str(page.runs)],
            ssr_mode=False,
            show_error=False,
            quiet=True,
            css=CSS,
            footer_links=["api"],
            max_file_size=f"{max_upload_mb:g}mb",
            auth=logins or None,
            auth_message="Log in to run sjc on this machine." if logins else None,
        )
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        stopped = page.close()
        for name, step in stopped:
            print(f"stopped {name} at step {step}; its checkpoint is saved", flush=True)


CACHE_AGE = 24 * 3600.0  # seconds a file of gradio's cache is kept (pruned at start and every hour)


def prune_cache(cache: Path, age: float) -> int:
    """Delete the files under `cache` older than `age` seconds (and the folders left empty); their number."""
    if not cache.is_dir():
        return 0
    now, removed = time.time(), 0
    for path in sorted(cache.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            if path.is_file() and now - path.stat().st_mtime > age:
                path.unlink()
                removed += 1
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    return removed


def _terminate_like_ctrl_c() -> Any:
    """SIGTERM (a service manager, `kill`) ends the server as Ctrl-C does, so its runs are checkpointed; the
    previous handler, or None outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)
