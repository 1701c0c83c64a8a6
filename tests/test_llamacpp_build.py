"""The cached llama-server build and the project's tiny GGUF model."""
from __future__ import annotations

import subprocess
import sys

import pytest

from app.tools.llamacpp.build import LLAMA_CPP_PYTHON_VERSION, build_server, cache_dir, cached_server
from app.tools.llamacpp.model import vocabulary, write_model
from app.tools.loadgen.scenarios import PROMPT_WORDS


@pytest.mark.unit
def test_the_cache_is_under_the_users_cache_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("AUTOTUNER_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "autotuner" / "llama.cpp" / LLAMA_CPP_PYTHON_VERSION
    monkeypatch.setenv("AUTOTUNER_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir("1.2.3") == tmp_path / "mine" / "llama.cpp" / "1.2.3"


def _fake_server(tmp_path, monkeypatch, exit_status: int):
    monkeypatch.setenv("AUTOTUNER_CACHE_DIR", str(tmp_path))
    binary = cache_dir() / "bin" / "llama-server"
    binary.parent.mkdir(parents=True)
    binary.write_text(f"#!/bin/sh\nexit {exit_status}\n")
    binary.chmod(0o755)
    return binary


@pytest.mark.process
def test_a_cached_binary_that_runs_is_used_without_building(tmp_path, monkeypatch):
    binary = _fake_server(tmp_path, monkeypatch, 0)
    assert build_server() == binary  # nothing downloaded or compiled: no build log either
    assert not (cache_dir() / "build.log").exists()


@pytest.mark.process
def test_a_cached_binary_that_does_not_run_is_not_taken(tmp_path, monkeypatch):
    _fake_server(tmp_path, monkeypatch, 1)
    assert cached_server() is None


@pytest.mark.process
def test_the_cli_prints_the_cached_binary(tmp_path, monkeypatch):
    binary = _fake_server(tmp_path, monkeypatch, 0)
    out = subprocess.run([sys.executable, "-m", "app.cli", "llamacpp", "build"], capture_output=True, text=True,
                         timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, str(binary))


@pytest.mark.unit
def test_every_prompt_word_is_a_token_and_only_spaced_words_are_emitted():
    vocab = vocabulary()
    assert len(set(vocab.tokens)) == len(vocab.tokens)
    space = vocab.tokens[ord(" ")]
    assert [vocab.tokens[i] for i in vocab.emitted] == [space + w for w in PROMPT_WORDS]
    assert (vocab.tokens[vocab.bos], vocab.tokens[vocab.eos]) == ("<|begin_of_text|>", "<|end_of_text|>")


@pytest.mark.unit
def test_the_model_file_is_a_small_llama_gguf_that_emits_words_only(tmp_path):
    import gguf
    import numpy as np

    path = write_model(tmp_path / "m.gguf")
    assert path.stat().st_size < 10_000_000
    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 3 + 9 * 4  # embeddings, output norm and projection; 9 per layer
    rows = np.asarray(tensors["output.weight"].data).reshape(len(vocabulary().tokens), -1)
    nonzero = {i for i in range(rows.shape[0]) if np.any(rows[i])}
    assert nonzero == set(vocabulary().emitted)
