"""``runcomfy demo``: the whole flow a user runs, against the embedded emulator on 127.0.0.1.

Makes a small captioned dataset, bulk-uploads it, trains a LoRA on it, downloads the artifacts,
runs a model with the LoRA, launches a machine, renders one ComfyUI prompt on it, and stops it;
then prints what it cost in API calls and time. Nothing leaves the machine: the emulator listens
on 127.0.0.1 only and every URL the client uses is the emulator's.
"""

from __future__ import annotations

import asyncio
import random
import string
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import click
from rich.console import Console
from rich.table import Table

from runcomfy_async import (
    DATASETS_ROOT,
    TRAINING_FOLDER,
    GPUType,
    Lora,
    PollPolicy,
    RunComfy,
    UploadReport,
    errors,
    to_jsonable,
)
from runcomfy_async.testing import Emulator

from ._app import cli_error, emit, output_options, settings, stdout_console
from .jobs import watch_job
from .models import status_notes
from .progress import Reporter

__all__ = ["DemoSummary", "command", "make_dataset", "run_demo"]

#: The AI Toolkit config the demo trains with; ``config_for`` fills in the fixed paths.
TEMPLATE: Final = string.Template("""\
job: extension
config:
  name: demo_dog_lora
  process:
    - type: sd_trainer
      training_folder: $training_folder
      device: cuda:0
      trigger_word: demo_dog
      network: {type: lora, linear: 16, linear_alpha: 16}
      save: {dtype: float16, save_every: 20, max_step_saves_to_keep: 4}
      datasets:
        - folder_path: ${datasets_root}PLACEHOLDER
          caption_ext: txt
          resolution: [512, 768, 1024]
      train: {batch_size: 1, steps: 60, lr: 0.0001, optimizer: adamw8bit}
      model: {name_or_path: black-forest-labs/FLUX.1-dev, is_flux: true, quantize: true}
      sample:
        sample_every: 20
        prompts: ["a photo of demo_dog on a beach"]
meta: {name: demo, version: "1.0"}
""").substitute(training_folder=TRAINING_FOLDER, datasets_root=DATASETS_ROOT)
MODEL_ID: Final = "blackforestlabs/flux-1-dev/lora"
IMAGES: Final = 12
IMAGE_SIZE: Final = 160


def _png(seed: int, size: int = IMAGE_SIZE) -> bytes:
    """A valid RGB PNG of noise (so it does not compress: real-looking upload sizes)."""
    rng = random.Random(seed)

    def chunk(kind: bytes, data: bytes) -> bytes:
        """One PNG chunk with its length and CRC."""
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    rows = b"".join(b"\x00" + rng.randbytes(size * 3) for _ in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 1))
        + chunk(b"IEND", b"")
    )


def make_dataset(folder: Path, count: int = IMAGES) -> list[Path]:
    """Write ``count`` PNG images into ``folder``, each with a ``.txt`` caption of its stem."""
    folder.mkdir(parents=True, exist_ok=True)
    scenes = ("on a beach", "in the snow", "on a sofa", "in a park", "at night", "in the rain")
    written: list[Path] = []
    for i in range(1, count + 1):
        image = folder / f"dog_{i:02d}.png"
        image.write_bytes(_png(i))
        caption = folder / f"dog_{i:02d}.txt"
        caption.write_text(f"a photo of demo_dog {scenes[i % len(scenes)]}\n", encoding="utf-8")
        written += [image, caption]
    return written


@attrs.frozen(kw_only=True)
class StepCost:
    """What one step of the demo took: API calls and wall-clock seconds."""

    step: str
    api_calls: int
    seconds: float


@attrs.frozen(kw_only=True)
class DemoSummary:
    """What the demo did and what it cost."""

    emulator_url: str
    rate_limit: float | None
    api_calls: int
    rate_limited: int
    seconds: float
    steps: tuple[StepCost, ...]
    uploaded: int
    uploaded_bytes: int
    artifacts: tuple[Path, ...]
    model_outputs: tuple[Path, ...]
    comfy_outputs: tuple[Path, ...]
    workdir: Path | None


class _Steps:
    """Prints numbered steps on stdout and measures each one's API calls and time."""

    def __init__(self, rc: RunComfy, console: Console, total: int) -> None:
        self._rc = rc
        self._console = console
        self._total = total
        self._n = 0
        self.costs: list[StepCost] = []

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Announce a step, then record its cost when it ends."""
        self._n += 1
        self._console.print(f"[bold cyan]{self._n}/{self._total}[/] [bold]{title}[/]")
        calls, started = self._rc.api_calls, time.monotonic()
        yield
        self.costs.append(
            StepCost(
                step=title,
                api_calls=self._rc.api_calls - calls,
                seconds=time.monotonic() - started,
            )
        )

    def say(self, text: str) -> None:
        """A detail line under the current step."""
        self._console.print(f"    {text}", markup=False, highlight=False, soft_wrap=True)


async def run_demo(
    *,
    speed: float,
    rate_limit: float | None,
    workdir: Path,
    console: Console,
    reporter: Reporter,
) -> DemoSummary:
    """Run the whole flow on a fresh in-process emulator; files go under ``workdir``.

    Raises:
        RunComfyError: any step failed (the emulator is closed and the machine stopped first).
    """
    started = time.monotonic()
    emulator = Emulator(rate_limit=rate_limit, speed=speed)
    # The client paces itself to the emulator's limit, as it would to the real account's.
    pace = {"rate": rate_limit} if rate_limit is not None else {"rate": 1000.0, "burst": 50}
    async with emulator as emu, emu.client(**pace) as rc:
        # Simulated time runs `speed` times fast, so the demo polls often too.
        quick = PollPolicy(initial=0.5, factor=1.5, max_interval=1.0)
        rc.jobs.poll = quick
        steps = _Steps(rc, console, total=8)
        console.print(f"RunComfy emulator on [bold]{emu.url}[/] (nothing leaves 127.0.0.1)")

        with steps.step(f"Make a captioned dataset: {IMAGES} images + captions"):
            folder = workdir / "dataset"
            files = make_dataset(folder)
            steps.say(f"{len(files)} files in {folder}")

        with steps.step("Create the dataset and bulk-upload the folder"):
            ds = await rc.datasets.create("demo-dogs")
            steps.say(f"dataset {ds.id} (demo-dogs)")
            with reporter.upload("uploading") as bars:
                report: UploadReport = await ds.upload_folder(folder, concurrency=8, progress=bars)
            steps.say(report.summary())

        with steps.step("Wait until the dataset is READY"):
            info = await ds.wait_ready(poll=quick)
            steps.say(f"{info.status.value}: {len(info.files)} files stored")

        with steps.step("Submit a training job (config from config_for) and watch it"):
            config = await rc.jobs.config_for(ds, TEMPLATE)
            job = await rc.jobs.submit(config, gpu_type=GPUType.H100)
            steps.say(f"job {job.id} ({job.name}) on {GPUType.H100.name}")
            with reporter.job(f"training {job.name}") as bar:
                final, seen = await watch_job(job, bar)
            progress = final.progress
            steps.say(
                f"{final.status.value} at step {progress.current_step if progress else '?'}"
                f"/{progress.total_steps if progress else '?'}; {len(seen)} artifacts appeared"
            )

        with steps.step("Download the job's artifacts"):
            with reporter.download("artifacts") as dbars:
                artifacts = await job.download(workdir / "artifacts", progress=dbars)
            steps.say(f"{len(artifacts)} files in {workdir / 'artifacts'}")

        with steps.step("Run a model request with the trained LoRA"):
            checkpoint = (await job.result()).checkpoints[-1]
            lora = Lora(checkpoint.name)
            steps.say(f"{MODEL_ID} with Lora({checkpoint.name!r})")
            request = await rc.models.submit(
                MODEL_ID, {"prompt": "a photo of demo_dog surfing", "seed": 7, "lora": lora}
            )
            result = await request.wait(poll=quick, on_status=status_notes(reporter, request.id))
            with reporter.download("model output") as mbars:
                outputs = await rc.models.download_outputs(
                    result.output, workdir / "model", progress=mbars
                )
            steps.say(f"request {request.id}: {result.status.value}, {len(outputs)} file(s)")

        with steps.step("Launch a machine, render a ComfyUI prompt on it, stop it"):
            workflow, version = next(
                (w, w.version_id) for w in await rc.machines.workflows() if w.version_id
            )
            steps.say(f"workflow {workflow.name} (version {version})")
            machine = await rc.machines.launch(
                version, server_type="medium", estimated_duration=600
            )
            async with machine:
                ready = await machine.wait_ready(poll=quick)
                steps.say(f"machine {machine.id} Ready at {ready.main_service_url}")
                comfy = machine.comfyui()
                prompt_id = await comfy.queue_prompt(_workflow(checkpoint.name))
                with reporter.prompt(f"prompt {prompt_id[:8]}") as pbar:
                    outputs_comfy = await comfy.wait(prompt_id, progress=pbar)
                comfy_dir = workdir / "comfyui"
                comfy_dir.mkdir(parents=True, exist_ok=True)
                comfy_files = [await comfy.download(f, comfy_dir) for f in outputs_comfy]
                steps.say(f"prompt {prompt_id}: {len(comfy_files)} image(s) saved")
            steps.say(f"machine {machine.id} stopped (billing stops)")

        with steps.step("Clean up: delete the demo dataset"):
            await rc.datasets.delete(ds.id)

        rate_limited = sum(1 for r in emu.log if r.status == 429)
        return DemoSummary(
            emulator_url=emu.url,
            rate_limit=rate_limit,
            api_calls=rc.api_calls,
            rate_limited=rate_limited,
            seconds=time.monotonic() - started,
            steps=tuple(steps.costs),
            uploaded=len(report.uploaded),
            uploaded_bytes=sum(f.size for f in report.uploaded),
            artifacts=tuple(artifacts),
            model_outputs=tuple(outputs),
            comfy_outputs=tuple(comfy_files),
            workdir=workdir,
        )


def _workflow(lora_name: str) -> dict[str, Any]:
    """A txt2img workflow in ComfyUI's API format ("Save (API Format)" in the UI)."""
    return {
        "4": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "flux1-dev.safetensors"},
        },
        "6": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": f"a photo of demo_dog, <lora:{lora_name}>", "clip": ["4", 1]},
        },
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 768, "height": 768}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "steps": 20,
                "seed": 7,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {
            "class_type": "SaveImage",
            "inputs": {"images": ["8", 0], "filename_prefix": "demo_dog"},
        },
    }


def _print_summary(summary: DemoSummary, console: Console, *, kept: bool) -> None:
    """The closing summary: per-step cost, totals, and the files produced."""
    table = Table(title="what it took", title_justify="left")
    table.add_column("step")
    table.add_column("API calls", justify="right")
    table.add_column("seconds", justify="right")
    for cost in summary.steps:
        table.add_row(cost.step, str(cost.api_calls), f"{cost.seconds:.1f}")
    table.add_row("total", str(summary.api_calls), f"{summary.seconds:.1f}", style="bold")
    console.print(table)
    limit = (
        f"at the emulated account limit of {summary.rate_limit:g} request/s"
        if summary.rate_limit is not None
        else "with the rate limit off"
    )
    console.print(
        f"{summary.api_calls} API calls in {summary.seconds:.1f}s {limit}; "
        f"{summary.rate_limited} answered 429 (the client paces itself)."
    )
    console.print(
        f"uploaded {summary.uploaded} files ({summary.uploaded_bytes:,} bytes); downloaded "
        f"{len(summary.artifacts)} artifacts, {len(summary.model_outputs)} model output(s), "
        f"{len(summary.comfy_outputs)} ComfyUI image(s)"
        + (f" into {summary.workdir}" if kept else " (pass --keep DIR to keep them)")
    )


@click.command("demo")
@click.option(
    "--speed",
    type=click.FloatRange(min=1),
    default=50.0,
    show_default=True,
    help="How many times faster than real time the emulator runs.",
)
@click.option(
    "--rate-limit",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="The emulated account's requests per second (the real one allows 1).",
)
@click.option("--no-rate-limit", is_flag=True, help="Switch the emulated rate limit off.")
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the dataset and downloads in this folder (default: a temporary one).",
)
@output_options
def command(speed: float, rate_limit: float, no_rate_limit: bool, keep: Path | None) -> None:
    """Run the whole flow on a local emulator: dataset, upload, training, model, machine.

    Starts the embedded emulator on 127.0.0.1 (no account, no network), then does what a user
    does, printing each step, with live progress on a terminal, and a closing summary.
    """
    opts = settings()
    # With --json, stdout carries only the summary; the narration goes to stderr.
    console = Console(stderr=True, highlight=False) if opts.json else stdout_console()
    reporter = Reporter(notes_to_stdout=not opts.json)
    opts.interrupt_hint = "the demo only touched its local emulator; nothing is left running"

    def go(workdir: Path) -> DemoSummary:
        """Run the demo in a fresh event loop."""
        return asyncio.run(
            run_demo(
                speed=speed,
                rate_limit=None if no_rate_limit else rate_limit,
                workdir=workdir,
                console=console,
                reporter=reporter,
            )
        )

    try:
        if keep is not None:
            summary = go(keep)
        else:
            with tempfile.TemporaryDirectory(prefix="runcomfy-demo-") as tmp:
                summary = go(Path(tmp))
    except errors.RunComfyError as exc:
        raise cli_error(exc, "demo") from exc
    if opts.json:
        emit(to_jsonable(summary))
    else:
        _print_summary(summary, console, kept=keep is not None)
