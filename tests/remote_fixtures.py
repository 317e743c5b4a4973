"""A real OpenAI-compatible server for the remote-backend tests: ``transformers serve`` on CPU.

``transformers serve`` loads checkpoints through the Auto classes, so it cannot read the
Qwen-1 layout (``QWenLMHeadModel`` is remote code). :func:`write_served_checkpoint` turns
the tiny Qwen-1 test checkpoint into a plain Qwen2 checkpoint with the *same weights*:
the state dict of the model ``qwen_core`` loaded (``save_pretrained`` would not do: it
reverses the load-time conversion and writes the Qwen-1 names back) plus a Hugging Face
tokenizer equivalent to ``qwen.tiktoken`` (same ranks, split pattern, NFC, special-token
ids 151643..151850) and a ChatML chat template that renders exactly what
``qwen_core.prompt`` writes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from server_process import free_port

# Renders Qwen's ChatML as PromptBuilder does: every message ``<|im_start|>role\ncontent<|im_end|>``,
# joined by "\n", then "\n<|im_start|>assistant\n". Qwen2-Instruct's template renders the same text.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if not loop.first %}{{ '\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n<|im_start|>assistant\n' }}{% endif %}"
)


def build_hf_tokenizer(vocab_file: str | Path):
    """A ``PreTrainedTokenizerFast`` that encodes like :class:`qwen_core.tokenizer.QwenTokenizer`.

    Built with transformers' own ``TikTokenConverter`` (BPE with ``ignore_merges``, as
    tiktoken does), given Qwen's split pattern rather than the converter's cl100k default
    (which groups digits by three), an NFC normaliser, and the 208 special tokens in
    Qwen's order so their ids are 151643 (``<|endoftext|>``), 151644, 151645, ...
    """
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from qwen_core.tokenizer import ENDOFTEXT, PAT_STR, SPECIAL_TOKENS

    backend = TikTokenConverter(vocab_file=str(vocab_file), pattern=PAT_STR, extra_special_tokens=SPECIAL_TOKENS)
    backend = backend.converted()
    backend.normalizer = normalizers.NFC()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def write_served_checkpoint(engine, folder: str | Path, hf_tokenizer) -> Path:
    """Write ``engine.model`` (a loaded Qwen-1 model) as a Qwen2 checkpoint ``transformers serve`` loads.

    ``hf_tokenizer`` comes from :func:`build_hf_tokenizer` (built once: it takes ~10 s).
    """
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = engine.model
    state = {
        name: tensor.detach().to(torch.float32).contiguous().clone()
        for name, tensor in model.state_dict().items()
        if "rotary" not in name
    }
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    for key in [k for k in config if k.startswith("qwen_")] + ["_name_or_path", "auto_map"]:
        config.pop(key, None)
    config.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", dtype="float32")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"eos_token_id": [151645, 151644, 151643], "pad_token_id": 151643, "do_sample": False}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    hf_tokenizer.save_pretrained(str(folder))
    return folder


class ServeProcess:
    """``transformers serve FOLDER`` on 127.0.0.1, CPU, fp32, in its own process group."""

    def __init__(self, folder: str | Path, log_file: str | Path, port: int | None = None):
        self.folder = Path(folder)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = Path(log_file)
        empty_cache = self.log_file.parent / f"hf-cache-{self.port}"
        empty_cache.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_CACHE": str(empty_cache),  # /v1/models lists the hub cache: keep it empty and local
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
        }
        cli = Path(sys.executable).with_name("transformers")
        cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "transformers.cli.transformers"]
        cmd += [
            "serve",
            str(self.folder),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--log-level",
            "warning",
        ]
        self._log = open(self.log_file, "wb")  # closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait for ``GET /health`` to answer 200; raises with the server's log if it does not."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200 and self.proc.poll() is None:
                    return  # answered, and by a server of ours that is still running
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"transformers serve did not answer /health in {timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        """The server's output so far (last 4000 characters)."""
        try:
            return self.log_file.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets open but never answers (a hung server)."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the server at once (its open streams die mid-reply)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """Terminate politely, then kill; close the log."""
        if self.proc.poll() is None:
            self.resume()
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
