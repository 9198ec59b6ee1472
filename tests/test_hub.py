"""push_to_hub -> from_pretrained round trips against a local Hub server (tests/hub_server.py), offline.

huggingface_hub reads HF_ENDPOINT when it is imported, so each side of a round trip runs in a fresh process
pointed at the server. The server's request log and file store prove the files went through it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_model
from hub_server import USER, LocalHub

TESTS = Path(__file__).parent

PUSH = """
import torch
from helpers import tiny_model, word_tokenizer
from peft import get_peft_model
from hf_lomdm.lora import lomdm_lora_config

model = tiny_model(schedule="lomdm", vocab_size=40)
model.generation_config.steps = 7
model.generation_config.order = "confidence"
model.push_to_hub("{repo}")
word_tokenizer().push_to_hub("{repo}")
peft_model = get_peft_model(tiny_model(schedule="lomdm", vocab_size=40), lomdm_lora_config(model, r=2))
with torch.no_grad():
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.fill_(0.01)
peft_model.push_to_hub("{repo}-lora")
z = torch.tensor([[5, 0, 7, 0, 9]])
torch.save((model(z).logits, peft_model(z).logits), "{out}/pushed.pt")
"""

LOAD = """
import sys
if {block}:
    sys.modules["hf_lomdm"] = None  # the package cannot be imported in this process
else:
    import hf_lomdm  # noqa: F401  (registers the auto classes)
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

model = AutoModelForMaskedLM.from_pretrained("{repo}", trust_remote_code={block}).eval()
assert type(model).__module__.startswith("transformers_modules") == {block}, type(model).__module__
tokenizer = AutoTokenizer.from_pretrained("{repo}")
config = model.generation_config
assert type(config).__name__ == "LoMDMGenerationConfig" and config.steps == 7 and config.order == "confidence"
assert tokenizer.mask_token_id == model.config.mask_token_id == 0
z = torch.tensor([[5, 0, 7, 0, 9]])
results = [model(z).logits]
sample = model.generate(torch.tensor([[2, 5]]), max_new_tokens=4)  # the Hub generation config drives it
assert sample.shape == (1, 6)
if not {block}:
    from peft import PeftModel
    from helpers import tiny_model
    lora = PeftModel.from_pretrained(tiny_model(schedule="lomdm", vocab_size=40), "{repo}-lora").eval()
    results.append(lora(z).logits)
torch.save(results, "{out}/loaded_{block}.pt")
"""


def _run(script: str, hub: LocalHub, home: Path) -> None:
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": "hf_local_test_token",
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(home),
        "HF_MODULES_CACHE": str(home / "modules"),
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
    }  # the helpers and this tree's package
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=TESTS
    )
    assert result.returncode == 0, result.stderr[-4000:]


def test_push_to_hub_then_from_pretrained_with_and_without_the_package(tmp_path):
    repo = f"{USER}/tiny-lomdm"
    with LocalHub() as hub:
        _run(PUSH.format(repo=repo, out=tmp_path), hub, tmp_path / "push_home")
        stored = set(hub.repos[repo].files)
        assert {
            "config.json",
            "model.safetensors",
            "generation_config.json",
            "tokenizer.json",
            "modeling_lomdm.py",
            "configuration_lomdm.py",
            "generation_lomdm.py",
            "generation_config_lomdm.py",
            "sampler_lomdm.py",
            "reveal_lomdm.py",
            "cache_lomdm.py",
            "schedule_lomdm.py",
            "layers_lomdm.py",
        } <= stored
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(hub.repos[f"{repo}-lora"].files)
        for block in (False, True):  # fresh caches: every file must come from the server
            _run(LOAD.format(repo=repo, out=tmp_path, block=block), hub, tmp_path / f"load_home_{block}")
        downloads = {path for method, path in hub.requests if method == "GET" and "/resolve/" in path}
        assert any(path.endswith("/model.safetensors") for path in downloads)
        assert any(path.endswith("/adapter_model.safetensors") for path in downloads)
        assert any(path.endswith("/modeling_lomdm.py") for path in downloads)  # the remote-code load
    pushed_base, pushed_lora = torch.load(tmp_path / "pushed.pt")
    base, lora = torch.load(tmp_path / "loaded_False.pt")
    (remote,) = torch.load(tmp_path / "loaded_True.pt")
    torch.testing.assert_close(base, pushed_base)
    torch.testing.assert_close(remote, pushed_base)
    torch.testing.assert_close(lora, pushed_lora)
    assert not torch.allclose(
        pushed_lora[torch.isfinite(pushed_lora)], pushed_base[torch.isfinite(pushed_base)]
    )


def test_local_hub_shuts_down_cleanly():
    with LocalHub() as hub:
        url = hub.url
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/api/whoami-v2", timeout=2)


LOCAL_LOAD_WITHOUT_PACKAGE = """
import sys
sys.modules["hf_lomdm"] = None  # the package cannot be imported in this process
from transformers import AutoModelForMaskedLM, AutoTokenizer, PreTrainedTokenizerFast

tokenizer = AutoTokenizer.from_pretrained("{folder}", trust_remote_code=True)  # as for the model: no prompt
plain = PreTrainedTokenizerFast.from_pretrained("{folder}")  # never reads config.json
model = AutoModelForMaskedLM.from_pretrained("{folder}", trust_remote_code=True)
assert tokenizer.mask_token_id == plain.mask_token_id == model.config.mask_token_id
assert tokenizer.model_max_length == plain.model_max_length == model.config.max_position_embeddings
assert tokenizer("ab").input_ids == plain("ab").input_ids
"""


def test_saved_folder_loads_tokenizer_and_model_without_the_package_and_without_a_prompt(tmp_path):
    from hf_lomdm.data import train_char_tokenizer

    tokenizer = train_char_tokenizer(["abc de", "fgh"], model_max_length=64)
    model = tiny_model(vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    env = {**os.environ, "HF_HOME": str(tmp_path / "home"), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", LOCAL_LOAD_WITHOUT_PACKAGE.format(folder=tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for symptom in ("Do you wish to run the custom code", "to instantiate a model of type", "https://hf.co/"):
        assert symptom not in result.stdout + result.stderr, symptom
