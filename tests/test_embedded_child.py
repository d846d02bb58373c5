"""The embedded model's supervised child process with the real SmolLM2 GGUF: kept warm and
reused, real native crashes (through the MEMBRANE_EMBEDDED_FAULT hook) become ModelCrashed
naming the signal and the fix, the next call gets a new child, and the prompt's shared
prefix is evaluated once."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from membrane.backends.embedded import EmbeddedBackend, LoadedModel, close_models, load_model
from membrane.backends.embedded_child import FAULT_ENV
from membrane.cli import main
from membrane.config import Settings
from membrane.errors import ConfigError, ModelCrashed, ModelNotFound

pytestmark = [pytest.mark.model, pytest.mark.slow]

SYSTEM = {"role": "system", "content": "You list the people a note names, as JSON. " * 8}


def _ask(model: LoadedModel, text: str, max_tokens: int = 4) -> dict[str, Any]:
    return model.chat([SYSTEM, {"role": "user", "content": text}], schema=None, max_tokens=max_tokens)


@pytest.fixture
def fault(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Sets the fault hook for children started in the test; stops every child afterwards."""

    def set_fault(value: str) -> None:
        monkeypatch.setenv(FAULT_ENV, value)

    yield set_fault
    monkeypatch.delenv(FAULT_ENV, raising=False)
    close_models()


def test_child_is_started_once_and_reused(tiny_model_path: Path) -> None:
    """Calls on one model go to the same warm child process; another n_ctx gets its own child."""
    first = load_model(tiny_model_path, "chatml", 1024)
    pid = first.pid
    assert pid is not None and pid != os.getpid()
    _ask(first, "Alice met Bob.")
    again = load_model(tiny_model_path, "chatml", 1024)
    _ask(again, "Carol met Dave.")
    assert again is first and first.pid == pid and first.children_started == 1
    other = load_model(tiny_model_path, "chatml", 512)
    assert other is not first and other.pid not in (None, pid)


def test_segfault_raises_model_crashed_and_the_next_call_gets_a_new_child(tiny_model_path: Path, fault: Any) -> None:
    """A real SIGSEGV in the child (NULL read through ctypes) raises ModelCrashed naming the model,
    the file, the signal and the rebuild fix; the following call works in a new child."""
    fault("segv:CRASH-HERE")
    model = load_model(tiny_model_path, "chatml", 1024)
    first_pid = model.pid
    with pytest.raises(ModelCrashed) as caught:
        model.chat([{"role": "user", "content": "CRASH-HERE please"}], schema=None, max_tokens=4, model="smollm2-135m")
    error = caught.value
    assert error.signal == "SIGSEGV"
    assert "'smollm2-135m'" in str(error) and str(tiny_model_path) in str(error) and "SIGSEGV" in str(error)
    assert "scripts/llama-wheel install" in error.hint and "AMX" in error.hint
    answer = _ask(model, "Alice met Bob.")
    assert answer["choices"][0]["message"]["content"] is not None
    assert model.children_started == 2 and model.pid not in (None, first_pid)


@pytest.mark.parametrize(
    ("kind", "name", "fix"),
    [("abort", "SIGABRT", "corrupt"), ("ill", "SIGILL", "scripts/llama-wheel"), ("kill", "SIGKILL", "OOM")],
)
def test_each_fatal_signal_is_named_with_its_own_fix(
    tiny_model_path: Path, fault: Any, kind: str, name: str, fix: str
) -> None:
    """SIGABRT, SIGILL and SIGKILL (the OOM killer's) are reported by name, each with the fix that fits it."""
    fault(kind)
    model = load_model(tiny_model_path, "chatml", 1024)
    with pytest.raises(ModelCrashed) as caught:
        _ask(model, "anything")
    assert caught.value.signal == name and name in str(caught.value)
    assert fix in caught.value.hint


def test_a_child_killed_from_outside_is_a_crash_too(tiny_model_path: Path) -> None:
    """A child that dies while idle (killed by another process) fails the next call as SIGKILL, the one after works."""
    model = load_model(tiny_model_path, "chatml", 1024, reuse_prefix=False)
    assert model.pid is not None
    os.kill(model.pid, signal.SIGKILL)
    with pytest.raises(ModelCrashed, match="SIGKILL"):
        _ask(model, "Alice met Bob.")
    assert _ask(model, "Alice met Bob.")["choices"]


def test_unknown_fault_kind_is_a_config_error(tiny_model_path: Path, fault: Any) -> None:
    """A misspelt fault hook is refused with the variable's name rather than ignored."""
    fault("segfault")
    with pytest.raises(ConfigError, match=FAULT_ENV):
        load_model(tiny_model_path, "chatml", 1024)


def test_a_file_llama_cpp_cannot_load_is_not_found_not_a_crash(tmp_path: Path) -> None:
    """A file that is not a GGUF model is ModelNotFound (llama.cpp refuses it in the child), not a crash."""
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf model at all" * 64)
    with pytest.raises(ModelNotFound, match="cannot load"):
        load_model(bogus, "chatml", 512)


def test_lora_path_reaches_llama_cpp(tiny_model_path: Path, tmp_path: Path) -> None:
    """lora_path is handed to llama_cpp.Llama in the child: the base model loads, then llama.cpp's
    adapter loader refuses a file that is no GGUF, naming the adapter; a missing adapter is ModelNotFound."""
    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"not a GGUF adapter" * 64)
    settings = Settings.model_validate(
        {
            "model": {
                "embedded": {
                    "tuned": {"path": str(tiny_model_path), "lora_path": str(adapter)},
                    "missing": {"path": str(tiny_model_path), "lora_path": "no/such/adapter.gguf"},
                }
            }
        }
    )
    backend = EmbeddedBackend(settings)
    with pytest.raises(ModelNotFound, match="LoRA adapter") as caught:
        backend.load("tuned")
    assert str(adapter) in str(caught.value)
    check = backend.check("missing")
    assert not check.ok and "adapter.gguf" in check.detail


def _write_lora(path: Path, rank: int = 4, scale: float = 0.5) -> Path:
    """A real GGUF LoRA adapter for SmolLM2 (random low-rank updates of every attn_q), written with gguf."""
    gguf = pytest.importorskip("gguf", reason="the gguf package (train extra) writes the adapter")
    import numpy as np

    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    for block in range(30):  # SmolLM2-135M: 30 blocks, width 576
        for part, shape in (("lora_a", (rank, 576)), ("lora_b", (576, rank))):
            writer.add_tensor(
                f"blk.{block}.attn_q.weight.{part}", (rng.standard_normal(shape) * scale).astype(np.float32)
            )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_lora_adapter_is_applied_in_the_child(tiny_model_path: Path, tmp_path: Path) -> None:
    """A model configured with lora_path generates through the adapter: greedy output differs from the base's."""
    adapter = _write_lora(tmp_path / "adapter.gguf")
    settings = Settings.model_validate(
        {
            "model": {
                "embedded": {
                    "base": {"path": str(tiny_model_path), "n_ctx": 512},
                    "tuned": {"path": str(tiny_model_path), "n_ctx": 512, "lora_path": str(adapter)},
                }
            }
        }
    )
    backend = EmbeddedBackend(settings)
    answers = [_ask(backend.load(name), "Name a city in France.", max_tokens=12) for name in ("base", "tuned")]
    base, tuned = (a["choices"][0]["message"]["content"] for a in answers)
    assert base and tuned and base != tuned
    assert backend.load("tuned").pid != backend.load("base").pid
    assert f"with LoRA {adapter}" in backend.check("tuned").detail


def test_shared_prompt_prefix_is_evaluated_once(tiny_model_path: Path) -> None:
    """In the warm child a second call with the same system prompt evaluates only its own tokens;
    with prefix reuse off every call evaluates the whole prompt."""
    warm = load_model(tiny_model_path, "chatml", 1024)
    cold = load_model(tiny_model_path, "chatml", 1024, reuse_prefix=False)
    for model in (warm, cold):
        _ask(model, "Alice met Bob in Paris.")
    warm_answer = _ask(warm, "Carol met Dave in Rome.")
    cold_answer = _ask(cold, "Carol met Dave in Rome.")
    prompt_tokens = warm_answer["usage"]["prompt_tokens"]
    assert prompt_tokens > 60
    assert cold_answer["membrane"]["prompt_eval_tokens"] == prompt_tokens
    assert warm_answer["membrane"]["prompt_eval_tokens"] < 20
    assert warm_answer["choices"][0]["message"]["content"] == cold_answer["choices"][0]["message"]["content"]


def _doctor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    monkeypatch.setenv("MEMBRANE_INBOX__PATH", str(inbox))
    monkeypatch.setenv("MEMBRANE_JOURNAL__PATH", str(tmp_path / "journal.sqlite3"))
    monkeypatch.setenv("MEMBRANE_MODEL__BACKEND", "embedded")
    monkeypatch.setenv("MEMBRANE_MODEL__NAME", "smollm2-135m")
    result = CliRunner().invoke(main, ["doctor"])
    lines = [line for line in result.output.splitlines() if line.split()[1:2] == ["model"]]
    assert len(lines) == 1, result.output
    return result, lines[0]


def test_doctor_probes_a_generation_in_the_child(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_path: Path
) -> None:
    """`membrane doctor` generates with the embedded model in its child process and says so."""
    result, line = _doctor(monkeypatch, tmp_path)
    assert result.exit_code == 0, result.output
    assert line.startswith("ok") and "generates" in line and "child process" in line


def test_doctor_reports_a_crashing_model_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_path: Path, fault: Any
) -> None:
    """A model whose child segfaults is one FAIL line naming SIGSEGV, with the rebuild command as the fix."""
    fault("segv")
    result, line = _doctor(monkeypatch, tmp_path)
    assert result.exit_code == 1, result.output
    assert line.startswith("FAIL") and "SIGSEGV" in line
    assert "scripts/llama-wheel install" in line.split("fix: ")[1]


def test_threads_setting_reaches_llama_cpp(tiny_model_path: Path) -> None:
    """[model] threads is what llama.cpp gets for generation and prompt batches; 0 means every
    CPU this process may use (llama-cpp-python's own default is half the cores)."""

    def loaded(threads: int) -> LoadedModel:
        settings = Settings.model_validate(
            {"model": {"threads": threads, "embedded": {"tiny": {"path": str(tiny_model_path), "n_ctx": 512}}}}
        )
        return EmbeddedBackend(settings).load("tiny")

    assert loaded(1).threads == (1, 1)
    every = len(os.sched_getaffinity(0))
    assert loaded(0).threads == (every, every)
