"""`membrane train` end to end: resolve the base, gather and check the cases,
render them, run the loop, export the GGUF LoRA, score the trained model on
the validation split through llama.cpp, and write the manifest.

The result is a folder train.models_dir/<name>/ (adapter.gguf +
manifest.json) that the embedded backend offers as a model at once; it only
becomes the champion through the bench and the promotion policy.
"""

from __future__ import annotations

import platform
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from membrane.backends.catalogue import (
    ADAPTER_FILE,
    AdapterFile,
    DataFile,
    Manifest,
    ManifestBase,
    MergedFile,
    Scalar,
    TrainingData,
    TrainingRun,
    Validation,
    installed_anchor_models,
)
from membrane.clock import iso_utc_seconds
from membrane.errors import ConfigError
from membrane.files import file_sha256
from membrane.logs import get_logger
from membrane.prompts import COMPACT_PROMPT_VERSION, TUNED_PROMPT_VERSION
from membrane.schema import UNBOUNDED_RULES
from membrane.train.data import (
    Case,
    data_sha256,
    distilled_cases,
    gold_overlaps,
    labelled_cases,
    repeat_counts,
    repeated,
    split_cases,
)

if TYPE_CHECKING:
    from membrane.config import Settings
    from membrane.train.loop import Progress, RunConfig, RunResult
    from membrane.train.render import Example, Tokenizer

__all__ = ["RECORDED_ENVIRONMENT", "Base", "TrainOptions", "TrainReport", "command_line", "resolve_base", "train"]

log = get_logger(__name__)


@dataclass(frozen=True)
class Base:
    """The model trained on, and how inference will run it."""

    name: str
    folder: Path  # the folder transformers loads from
    gguf_file: str | None  # the GGUF inside `folder`; None for a Hugging Face folder
    inference_path: str  # the base GGUF spec the trained model runs on ("" if none)
    chat_format: str
    n_ctx: int
    parameters: str


# The environment variables that change how a training run computes, written
# into the manifest's command so that it reproduces the run. An allow-list:
# MEMBRANE_* and the rest of the environment may hold secrets.
RECORDED_ENVIRONMENT = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def command_line(argv: list[str], environ: Mapping[str, str]) -> str:
    """The `membrane ...` command of this run, led by the recorded environment variables that are set."""
    assignments = [f"{name}={shlex.quote(environ[name])}" for name in RECORDED_ENVIRONMENT if environ.get(name)]
    return " ".join([*assignments, shlex.join(["membrane", *argv])])


@dataclass(frozen=True)
class TrainOptions:
    """What the command line adds to the [train] settings."""

    resume: bool = False
    limit: int = 0  # use only the first N cases (0: all), for quick measurements
    max_steps: int = 0  # stop after N optimizer steps in this process (0: run to the end)
    max_minutes: float = 0  # stop (evaluate, checkpoint, export) after this much training time (0: no limit)
    chat_format: str = "chatml"  # for a Hugging Face folder base
    base_gguf: str = ""  # the GGUF a Hugging Face folder base runs on at inference
    score: bool = True  # score the trained model on the validation split through llama.cpp
    command: str = ""


@dataclass(frozen=True)
class TrainReport:
    """What a run made: the trained model, its manifest as written, and the loop's result."""

    name: str
    folder: Path  # train.models_dir/<name>
    manifest: Manifest
    result: RunResult


def resolve_base(settings: Settings, options: TrainOptions) -> Base:
    """train.base as a [model.embedded] name or an installed anchor (GGUF), or a Hugging Face model folder."""
    from membrane.backends.gguf import locate_gguf

    spec = settings.train.base
    bases = {**installed_anchor_models(), **settings.model.embedded}
    configured = bases.get(spec)
    if configured is not None:
        if configured.lora_path:
            raise ConfigError(f"train.base = {spec!r} is itself a trained model; train from its base", key="train.base")
        path = locate_gguf(configured.path)
        return Base(
            spec,
            path.parent,
            path.name,
            configured.path,
            configured.chat_format,
            configured.n_ctx,
            configured.parameters,
        )
    folder = Path(spec).expanduser()
    if (folder / "config.json").is_file():
        return Base(folder.name, folder, None, options.base_gguf, options.chat_format, settings.model.num_ctx, "")
    known = ", ".join(sorted(bases))
    raise ConfigError(
        f"train.base = {spec!r} is neither a [model.embedded] name or installed anchor ({known}) nor a "
        "Hugging Face model folder (with config.json); `membrane anchors` installs the anchors",
        key="train.base",
    )


def _tokenizer(base: Base) -> Tokenizer:
    from membrane.train.render import HFTokenizer, LlamaTokenizer

    return LlamaTokenizer(base.folder / base.gguf_file) if base.gguf_file else HFTokenizer(base.folder)


def gather_cases(settings: Settings, limit: int = 0) -> list[Case]:
    """Labelled and distilled cases, refused if any equals or nears a text of an evaluation set."""
    from membrane.score import load_gold

    rules = settings.extraction.rules() if settings.train.fold_labels else UNBOUNDED_RULES
    cases = labelled_cases(settings.train.data, rules)
    if settings.train.distill_from:
        from membrane.journal import Journal

        with Journal(settings.journal.path) as journal:
            cases += distilled_cases(
                journal, settings.train.distill_from, threshold=settings.extraction.grounding_threshold
            )
    if limit:
        cases = cases[:limit]
    if not cases:
        raise ConfigError(
            f"no training cases in {', '.join(settings.train.data)}"
            + (f" or from {', '.join(settings.train.distill_from)}" if settings.train.distill_from else ""),
            key="train.data",
        )
    held_out = [g.text for path in settings.bench.eval_files for g in load_gold(path)]
    overlaps = gold_overlaps(cases, held_out)
    if overlaps:
        raise ConfigError(
            f"{len(overlaps)} training cases equal or near an evaluation text: {', '.join(overlaps[:10])}",
            key="train.data",
            hint="Training data never overlaps an evaluation set (bench.eval_files); remove those cases.",
        )
    return cases


def prompt_version(settings: Settings) -> str:
    """The prompt version (and so the answer's shape) a model trained with `settings` is asked with."""
    return COMPACT_PROMPT_VERSION if settings.train.answer == "compact" else TUNED_PROMPT_VERSION


def _render_all(
    cases: list[Case], tokenizer: Tokenizer, base: Base, max_len: int, version: str, counts: Sequence[int] = ()
) -> tuple[list[Example], int]:
    """Each case rendered once, kept when it fits `max_len` and then repeated `counts` times (default once);
    and how many cases were too long."""
    from membrane.train.render import render_case

    examples = [render_case(case, tokenizer, base.chat_format, version) for case in cases]
    fits = [len(e.input_ids) <= max_len for e in examples]
    kept = repeated(
        [e for e, ok in zip(examples, fits, strict=True) if ok],
        [n for n, ok in zip(counts or [1] * len(cases), fits, strict=True) if ok],
    )
    return kept, fits.count(False)


def _run_config(settings: Settings, base: Base, cases: list[Case], n_train: int, n_val: int) -> RunConfig:
    """The run's identity: the base, the data's hash and counts, and every train setting RunConfig names."""
    from dataclasses import fields

    from membrane.train.loop import RunConfig

    derived = {"base", "data_sha256", "train_cases", "val_cases", "repeat"}
    from_settings = {f.name: getattr(settings.train, f.name) for f in fields(RunConfig) if f.name not in derived}
    return RunConfig(
        base=base.name,
        data_sha256=data_sha256(cases),
        train_cases=n_train,
        val_cases=n_val,
        repeat="; ".join(settings.train.repeat),
        **from_settings,
    )


def model_name(settings: Settings) -> str:
    return settings.train.name or f"{Path(settings.train.base).name}-membrane"


def train(settings: Settings, options: TrainOptions, progress: Callable[[Progress], None] | None = None) -> TrainReport:
    """Train, export and describe one model; returns its folder and manifest."""
    from membrane.train import export, loop

    started = time.monotonic()
    base = resolve_base(settings, options)
    cases = gather_cases(settings, options.limit)
    train_cases, val_cases = split_cases(cases, settings.train.val_fraction, settings.train.seed)
    tokenizer = _tokenizer(base)
    version = prompt_version(settings)
    counts = repeat_counts(train_cases, settings.train.repeats())
    train_examples, long_train = _render_all(train_cases, tokenizer, base, settings.train.max_seq_len, version, counts)
    val_examples, long_val = _render_all(val_cases, tokenizer, base, settings.train.max_seq_len, version)
    if not train_examples:
        raise ConfigError("every training case is longer than train.max_seq_len", key="train.max_seq_len")
    config = _run_config(settings, base, cases, len(train_examples), len(val_examples))
    name = model_name(settings)
    work_dir = Path(settings.train.work_dir) / name
    log.info(
        "train_started",
        name=name,
        base=base.name,
        train_cases=len(train_examples),
        val_cases=len(val_examples),
        config=asdict(config),
    )
    model = loop.load_base(base.folder, base.gguf_file)
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else model.config.eos_token_id
    result = loop.run(
        model,
        train_examples,
        val_examples,
        config,
        work_dir,
        pad_id=int(pad_id or 0),
        threads=settings.train.threads,
        resume=options.resume,
        progress=progress,
        stop_after=options.max_steps or None,
        max_seconds=options.max_minutes * 60 or None,
    )
    folder = Path(settings.train.models_dir) / name
    base_config = export.save_base_config(model, base.folder, base.gguf_file, work_dir / "base-config")
    adapter = export.convert_lora(result.adapter_dir, base_config, folder, settings.train.outtype)
    merged = _merged(settings, base, result, work_dir, folder) if settings.train.merged else None
    validation = Validation(loss=result.best_val_loss, initial_loss=result.initial_val_loss, scores=None)
    manifest = _manifest(
        settings,
        options,
        base,
        cases,
        val_cases,
        config,
        result,
        adapter,
        merged,
        long_train + long_val,
        time.monotonic() - started,
        validation,
    )
    manifest.write(folder)
    if options.score and val_cases and base.inference_path:
        scores = validation_scores(settings, name, val_cases)
        manifest = manifest.model_copy(update={"validation": validation.model_copy(update={"scores": scores})})
        manifest.write(folder)
    log.info("train_done", name=name, folder=str(folder), steps=result.steps, best_val_loss=result.best_val_loss)
    return TrainReport(name, folder, manifest, result)


def _merged(settings: Settings, base: Base, result: RunResult, work_dir: Path, folder: Path) -> Path:
    from peft import PeftModel

    from membrane.train import export, loop

    merged_dir = work_dir / "merged"
    model = PeftModel.from_pretrained(loop.load_base(base.folder, base.gguf_file), str(result.adapter_dir))
    model.merge_and_unload().save_pretrained(str(merged_dir))
    export.save_base_config(model, base.folder, base.gguf_file, merged_dir)
    return export.convert_merged(merged_dir, folder, settings.train.merged)


def validation_scores(settings: Settings, name: str, val_cases: list[Case]) -> dict[str, Scalar]:
    """The trained model's bench row on the validation split (llama.cpp, base + adapter)."""
    from membrane.bench import bench_model
    from membrane.schema import ModelRef
    from membrane.score import GoldCase

    gold = [GoldCase(c.id, c.text, c.extraction) for c in val_cases]
    run = bench_model(settings, ModelRef("embedded", name), gold)
    return {k: v for k, v in run.row().items() if k not in ("model", "parameters")} | {"detail": run.detail}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("torch", "transformers", "peft", "gguf", "llama-cpp-python", "membrane"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


def _data_files(cases: list[Case]) -> tuple[DataFile, ...]:
    counts: dict[str, int] = {}
    for case in cases:
        counts[case.source] = counts.get(case.source, 0) + 1
    return tuple(
        DataFile(source=source, cases=n, sha256=file_sha256(Path(source)))
        if Path(source).is_file()
        else DataFile(source=source, cases=n)
        for source, n in counts.items()
    )


def _manifest(
    settings: Settings,
    options: TrainOptions,
    base: Base,
    cases: list[Case],
    val_cases: list[Case],
    config: RunConfig,
    result: RunResult,
    adapter: Path,
    merged: Path | None,
    too_long: int,
    wall_s: float,
    validation: Validation,
) -> Manifest:
    base_file = base.folder / base.gguf_file if base.gguf_file else None
    return Manifest(
        name=model_name(settings),
        created_at=iso_utc_seconds(),
        base=ManifestBase(
            name=base.name,
            path=base.inference_path,
            n_ctx=base.n_ctx,
            parameters=base.parameters,
            sha256=file_sha256(base_file) if base_file else "",
        ),
        prompt_version=prompt_version(settings),
        chat_format=base.chat_format,
        adapter=AdapterFile(
            file=ADAPTER_FILE, sha256=file_sha256(adapter), bytes=adapter.stat().st_size, outtype=settings.train.outtype
        ),
        merged=MergedFile(file=merged.name, sha256=file_sha256(merged)) if merged else None,
        data=TrainingData(
            sha256=config.data_sha256,
            cases=len(cases),
            train_cases=config.train_cases,
            val_cases=config.val_cases,
            left_out_too_long=too_long,
            val_ids=tuple(sorted(c.id for c in val_cases)),
            files=_data_files(cases),
            distill_from=settings.train.distill_from,
        ),
        hyperparameters={
            **asdict(config),
            "target_modules": "all-linear",
            "optimizer": "AdamW",
            "schedule": "linear warm-up, cosine to 10%",
        },
        training=TrainingRun(
            steps=result.steps,
            max_steps=result.max_steps,
            resumed_from=result.resumed_from,
            wall_time_s=round(wall_s, 1),
            loop_seconds=round(result.seconds, 1),
            tokens=result.train_tokens,
            tokens_per_second=round(result.tokens_per_second, 1),
            first_loss=result.first_loss,
            last_loss=result.last_loss,
            threads=settings.train.threads,
            seed=settings.train.seed,
        ),
        validation=validation,
        command=options.command,
        versions=_versions(),
    )
