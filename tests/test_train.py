"""Fine-tuning with the real parts: SmolLM2-135M loaded by transformers from
its PyPI GGUF, real LoRA steps with peft, llama.cpp's converter, and the
adapter applied by llama.cpp at inference. One short run is shared by the
tests (a few steps on a handful of cases), stopped half-way and resumed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):  # in CI a missing extra fails
    pytest.importorskip("torch", reason="the train extra is not installed")
    pytest.importorskip("peft", reason="the train extra is not installed")

from membrane.backends.catalogue import ADAPTER_FILE, MANIFEST_FILE  # noqa: E402
from membrane.config import Settings  # noqa: E402
from membrane.schema import Extraction  # noqa: E402
from membrane.train.data import Case  # noqa: E402
from membrane.train.loop import RunConfig, batch_indices, epoch_order  # noqa: E402
from membrane.train.render import IGNORE_INDEX, LlamaTokenizer, render_case, training_messages  # noqa: E402

CASES = [
    (
        "t1",
        "Priya deployed Jellyfin on the Synology NAS.",
        [("Priya", "subject"), ("Jellyfin", "object"), ("Synology NAS", "object")],
        [("Priya", "DEPLOYED", "Jellyfin"), ("Jellyfin", "RUNS_ON", "Synology NAS")],
    ),
    (
        "t2",
        "Tomasz works at Allegro in Poznań.",
        [("Tomasz", "subject"), ("Allegro", "object"), ("Poznań", "object")],
        [("Tomasz", "WORKS_AT", "Allegro"), ("Allegro", "LOCATED_IN", "Poznań")],
    ),
    (
        "t3",
        "Home Assistant runs on the Intel NUC.",
        [("Home Assistant", "subject"), ("Intel NUC", "object")],
        [("Home Assistant", "RUNS_ON", "Intel NUC")],
    ),
    (
        "t4",
        "Lena is reading Piranesi by Susanna Clarke.",
        [("Lena", "subject"), ("Piranesi", "object"), ("Susanna Clarke", "object")],
        [("Lena", "READS", "Piranesi"), ("Susanna Clarke", "WROTE", "Piranesi")],
    ),
    ("t5", "Buy oat milk and bread tomorrow.", [], []),
    (
        "t6",
        "Kenji manages the Tokyo office of Mercari.",
        [("Kenji", "subject"), ("Tokyo office", "object"), ("Mercari", "object")],
        [("Kenji", "MANAGES", "Tokyo office"), ("Tokyo office", "PART_OF", "Mercari")],
    ),
]


def _rows() -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "text": t,
            "entities": [{"name": n, "role": r} for n, r in ents],
            "relationships": [{"source": s, "relation": rel, "target": o} for s, rel, o in rels],
            "tags": [],
        }
        for i, t, ents, rels in CASES
    ]


def _case(row: dict[str, Any]) -> Case:
    return Case(row["id"], row["text"], Extraction.parse({k: row[k] for k in ("entities", "relationships")}), "test")


@pytest.mark.parametrize(("fixture", "chat_format"), [("tiny_model_path", "chatml"), ("gemma_model_path", "gemma")])
def test_training_prompt_tokens_equal_llamacpp_inference(
    fixture: str, chat_format: str, request: pytest.FixtureRequest
) -> None:
    """The prompt part of a training example is token for token what llama.cpp evaluates at inference."""
    from llama_cpp import Llama

    gguf: Path = request.getfixturevalue(fixture)
    case = _case(_rows()[1])
    example = render_case(case, LlamaTokenizer(gguf), chat_format)
    n_prompt = example.labels.index(next(label for label in example.labels if label != IGNORE_INDEX))
    llama = Llama(model_path=str(gguf), chat_format=chat_format, n_ctx=1024, verbose=False)
    try:
        response = llama.create_chat_completion(messages=training_messages(case.text), max_tokens=1, temperature=0)
        evaluated = [int(t) for t in llama.input_ids[: response["usage"]["prompt_tokens"]]]
        answer = llama.tokenize(case.answer().encode(), add_bos=False, special=True)
    finally:
        llama.close()
    assert list(example.input_ids[:n_prompt]) == evaluated
    assert list(example.input_ids[n_prompt : n_prompt + len(answer)]) == answer
    assert all(label == IGNORE_INDEX for label in example.labels[:n_prompt])
    assert example.labels[n_prompt:] == example.input_ids[n_prompt:]


def test_a_compact_answer_model_learns_the_compact_answer_after_its_own_prompt(tiny_model_path: Path) -> None:
    """train.answer = "compact": the example's prompt is extract-t2's and its labels are the compact JSON."""
    from membrane.config import TrainSettings
    from membrane.prompts import COMPACT_PROMPT_VERSION
    from membrane.train.trainer import prompt_version

    settings = Settings(train=TrainSettings(answer="compact"))
    assert prompt_version(settings) == COMPACT_PROMPT_VERSION
    tokenizer = LlamaTokenizer(tiny_model_path)
    case = _case(_rows()[0])
    example = render_case(case, tokenizer, "chatml", COMPACT_PROMPT_VERSION)
    answer = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    text = tokenizer.llama.detokenize(answer, special=True).decode()
    assert text.startswith('{"entities":["Priya","Jellyfin","Synology NAS"],"relationships":[["Priya","DEPLOYED"')
    learned = Extraction.parse(json.loads(text[: text.rindex("}") + 1]))
    assert [e.name for e in learned.entities] == [e.name for e in case.extraction.entities]
    assert learned.relationships == case.extraction.relationships
    objects = render_case(case, tokenizer, "chatml")
    assert len(example.input_ids) < len(objects.input_ids)


def test_batches_are_a_pure_function_of_seed_and_step() -> None:
    """Every epoch visits each case once, and the same (seed, step) always picks the same cases."""
    config = RunConfig("b", "d", 8, 16, 0.0, 1e-3, 2, 2, 1, 10, 10, 3, 512, train_cases=5, val_cases=0)
    first_epoch = [i for step in range(3) for i in batch_indices(step, 0, config)][:5]
    assert sorted(first_epoch) == [0, 1, 2, 3, 4]
    assert batch_indices(4, 0, config) == batch_indices(4, 0, config)


def test_length_grouped_batches_cover_every_case_with_less_padding() -> None:
    """Grouping by length still reads each case once an epoch, and pads less than a plain shuffle."""
    config = RunConfig("b", "d", 8, 16, 0.0, 1e-3, 1, 4, 1, 10, 10, 7, 512, train_cases=400, val_cases=0)
    lengths = [50 + (i * 37) % 400 for i in range(400)]

    def padding(order: list[int]) -> int:
        batches = [order[k : k + 4] for k in range(0, len(order), 4)]
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    grouped = epoch_order(0, config, lengths)
    assert sorted(grouped) == list(range(400))
    assert [i for step in range(100) for i in batch_indices(step, 0, config, lengths)] == grouped
    assert padding(grouped) * 3 < padding(epoch_order(0, config))


@pytest.mark.parametrize(("fixture", "chat_format"), [("tiny_model_path", "chatml"), ("gemma_model_path", "gemma")])
def test_answer_only_loss_equals_the_models_own_loss(
    fixture: str, chat_format: str, request: pytest.FixtureRequest
) -> None:
    """The loss that runs the output head on answer positions alone is transformers' masked, shifted
    mean over the same padded batch, in value and in gradient (Gemma's vocabulary and soft-cap included)."""
    import torch

    from membrane.train.loop import _wrap_lora, answer_loss, collate, load_base

    gguf: Path = request.getfixturevalue(fixture)
    tokenizer = LlamaTokenizer(gguf)
    examples = [render_case(_case(row), tokenizer, chat_format) for row in _rows()[:3]]
    batch = collate(examples, pad_id=0)
    assert int((batch["labels"] == IGNORE_INDEX).sum()) > int(
        batch["attention_mask"].numel() - batch["attention_mask"].sum()
    )
    torch.manual_seed(0)
    config = RunConfig("b", "d", 4, 8, 0.0, 1e-3, 1, 3, 1, 10, 10, 0, 512, train_cases=3, val_cases=0)
    model = _wrap_lora(load_base(gguf.parent, gguf.name), config)
    for name, parameter in model.named_parameters():  # LoRA B starts at zero: give it weight, so its gradient is a test
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)
    model.eval()  # no dropout: the two passes must see the same network

    reference = model(**batch).loss
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    ours = answer_loss(model, batch)
    ours.backward()
    assert float(ours.detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter.grad, expected[name], rtol=1e-3, atol=1e-6)


def _settings(root: Path) -> Settings:
    (root / "data").mkdir(parents=True)
    (root / "data" / "cases.jsonl").write_text("\n".join(json.dumps(r) for r in _rows()) + "\n", encoding="utf-8")
    return Settings.model_validate(
        {
            "journal": {"path": root / "journal.sqlite3"},
            "bench": {"out_dir": root / "bench"},
            "model": {"num_predict": 256},
            "train": {
                "data": [str(root / "data" / "*.jsonl")],
                "models_dir": root / "models",
                "work_dir": root / "work",
                "name": "tiny-tuned",
                "rank": 4,
                "alpha": 8,
                "learning_rate": 3e-3,
                "epochs": 3,
                "batch_size": 2,
                "val_fraction": 0.34,
                "eval_every": 2,
                "checkpoint_every": 3,
                "threads": 2,
                "outtype": "f16",
            },
        }
    )


@pytest.fixture(scope="module")
def runs(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, Settings]]:
    """A run stopped after 3 of its 6 steps, then the same run resumed to the end."""
    from membrane.train.trainer import TrainOptions, train

    settings = _settings(tmp_path_factory.mktemp("train"))
    stopped = train(settings, TrainOptions(max_steps=3, score=False))
    resumed = train(settings, TrainOptions(resume=True))
    yield stopped, resumed, settings
    from membrane.backends.embedded import close_models

    close_models()


def test_training_lowers_the_loss_and_changes_the_adapter(runs: tuple[Any, Any, Settings]) -> None:
    """A few real steps bring the validation loss below the base's, and the LoRA B matrices leave zero."""
    from safetensors.torch import load_file

    _, resumed, _ = runs
    validation = resumed.manifest.validation
    assert validation is not None and validation.loss is not None and validation.initial_loss is not None
    assert validation.loss < validation.initial_loss
    weights = load_file(str(resumed.result.adapter_dir / "adapter_model.safetensors"))
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and all(float(t.abs().max()) > 0 for t in lora_b)


def test_resume_continues_from_the_checkpoint_step(runs: tuple[Any, Any, Settings]) -> None:
    """--resume starts at the checkpoint's step and keeps the losses already logged."""
    stopped, resumed, _ = runs
    assert (stopped.result.steps, stopped.result.max_steps) == (3, 6)
    assert (resumed.result.resumed_from, resumed.result.steps) == (3, 6)
    assert resumed.result.losses[:3] == stopped.result.losses


def test_export_is_a_manifested_gguf_lora(runs: tuple[Any, Any, Settings]) -> None:
    """The folder holds a GGUF LoRA adapter and a manifest naming base, data, prompt and training facts."""
    import gguf

    _, resumed, settings = runs
    folder = Path(settings.train.models_dir) / "tiny-tuned"
    reader = gguf.GGUFReader(str(folder / ADAPTER_FILE))
    assert bytes(reader.fields["general.type"].parts[-1]).decode() == "adapter"
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["prompt_version"] == "extract-t1" and manifest["chat_format"] == "chatml"
    assert len(manifest["base"]["sha256"]) == 64 and len(manifest["data"]["sha256"]) == 64
    assert manifest["hyperparameters"]["rank"] == 4 and manifest["training"]["steps"] == 6
    assert manifest["validation"]["scores"]["valid_json"] == 1.0


def test_llamacpp_applies_the_adapter_and_extracts(runs: tuple[Any, Any, Settings]) -> None:
    """The trained model loads in llama.cpp as base + lora_path and gives a valid extraction with extract-t1."""
    from membrane.backends import get_backend
    from membrane.extract import Extractor

    _, _, settings = runs
    backend = get_backend("embedded", settings)
    assert backend.models["tiny-tuned"].lora_path.endswith(ADAPTER_FILE)  # type: ignore[attr-defined]
    result = Extractor(backend, "tiny-tuned", settings).extract("Marta installed Nextcloud on the Hetzner server.")
    assert result.prompt_version == "extract-t1" and result.calls >= 1
    assert isinstance(result.extraction, Extraction)


def test_registered_in_ollama_it_extracts(runs: tuple[Any, Any, Settings], ollama_server: Any) -> None:
    """`membrane register` creates FROM base + ADAPTER + the training TEMPLATE in the real Ollama server,
    which then answers a valid extraction with the tuned prompt."""
    from membrane.backends import get_backend
    from membrane.extract import Extractor
    from membrane.train.ollama import register_ollama

    _, _, settings = runs
    settings = settings.model_copy(
        update={"model": settings.model.model_copy(update={"ollama_host": ollama_server.host})}
    )
    name = register_ollama(settings, "tiny-tuned")
    backend = get_backend("ollama", settings)
    assert f"{name}:latest" in backend.list_models() or name in backend.list_models()
    result = Extractor(backend, name, settings).extract("Marta installed Nextcloud on the Hetzner server.")
    assert result.prompt_version == "extract-t1" and result.backend == "ollama"


def test_train_refuses_cases_that_near_the_gold_set(tmp_path: Path) -> None:
    """`membrane train` stops with exit 2 before loading any model when a case nears a gold text."""
    from click.testing import CliRunner

    from membrane.cli import main

    row = {
        "id": "x1",
        "text": "Grafana runs on the Raspberry Pi!",
        "tags": [],
        "entities": [{"name": "Grafana", "role": "subject"}],
        "relationships": [],
    }
    (tmp_path / "cases.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "*.jsonl"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2, result.output
    assert "near an evaluation text: x1" in result.output
    assert not (tmp_path / "m").exists()


def test_repeat_weights_chosen_files_after_the_validation_split(tmp_path: Path) -> None:
    """train.repeat multiplies a file's training cases; held-out cases are drawn first and never train."""
    from membrane.config import TrainSettings
    from membrane.train.data import labelled_cases, repeat_counts, repeated, split_cases

    for name, prefix in (("short.jsonl", "s"), ("long.jsonl", "l")):
        rows = [
            {"id": f"{prefix}{i}", "text": f"Host {prefix}{i} runs Debian.", "entities": [], "relationships": []}
            for i in range(20)
        ]
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    settings = TrainSettings(repeat=(f"{tmp_path}/short*.jsonl=3",))
    train_cases, val_cases = split_cases(labelled_cases([str(tmp_path / "*.jsonl")]), 0.2, seed=0)
    weighted = repeated(train_cases, repeat_counts(train_cases, settings.repeats()))

    held_out = {c.id for c in val_cases}
    assert held_out and not held_out & {c.id for c in weighted}
    short = [c for c in train_cases if c.id.startswith("s")]
    assert len(weighted) == len(train_cases) + 2 * len(short)
    assert all(sum(w.id == c.id for w in weighted) == (3 if c.id.startswith("s") else 1) for c in train_cases)


def test_a_repeated_case_renders_once_and_a_too_long_one_counts_once(tiny_model_path: Path) -> None:
    """Repetition copies the rendered example; a case over max_seq_len is left out once, however often it repeats."""
    from membrane.prompts import TUNED_PROMPT_VERSION
    from membrane.train.trainer import Base, _render_all

    base = Base("tiny", tiny_model_path.parent, tiny_model_path.name, str(tiny_model_path), "chatml", 512, "tiny")
    short, long = _case(_rows()[0]), _case(_rows()[1])
    long = Case(long.id, " ".join([long.text] * 40), long.extraction, long.source)
    tokenizer = LlamaTokenizer(tiny_model_path)
    max_len = len(render_case(short, tokenizer, "chatml").input_ids)
    assert len(render_case(long, tokenizer, "chatml").input_ids) > max_len

    kept, too_long = _render_all([short, long], tokenizer, base, max_len, TUNED_PROMPT_VERSION, [3, 4])
    assert too_long == 1
    assert len(kept) == 3 and all(e.input_ids == kept[0].input_ids for e in kept)


def test_repeat_refuses_an_entry_without_a_count(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from membrane.cli import main

    result = CliRunner().invoke(main, ["train", "--repeat", "config/train/*.jsonl", "--out", str(tmp_path / "m")])
    assert result.exit_code == 2, result.output
    assert "expected GLOB=N" in result.output
    assert not (tmp_path / "m").exists()
