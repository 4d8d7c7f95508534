"""The chunked loss: the model's own loss and gradients, without the whole logits.

python -m pytest -q tests/trial/test_loss.py
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

from sweep.planning import activations, recipe
from sweep.planning.arch import Arch, llama_config, load_arch
from sweep.planning.assumptions import Settings
from sweep.settings.errors import ConfigError
from sweep.settings.schema import MethodConfig
from sweep.settings.validate import resolve_loss_impl
from sweep.trial import batches, loss

IGNORE = -100


def _models(arch: Arch, lora: bool = False) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same random model twice: as it is, and with the chunked loss."""
    torch.manual_seed(0)
    full = LlamaForCausalLM(llama_config(arch, max_position_embeddings=256))
    chunked = copy.deepcopy(full)
    loss.use_chunked(chunked)
    if lora:
        config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
        full, chunked = get_peft_model(full, config), get_peft_model(chunked, config)
        chunked.load_state_dict(full.state_dict())
    return full.train(), chunked.train()


def _rows(n: int, vocab: int, seed: int = 1) -> list[dict[str, list[int]]]:
    """Examples of varied lengths, the loss on their last third (the answer)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = 12 + 5 * i
        ids = torch.randint(0, vocab, (length,), generator=g).tolist()
        cut = length - length // 3
        rows.append({"input_ids": ids, "labels": [IGNORE] * cut + ids[cut:]})
    return rows


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("answer_logits", [False, True])
@pytest.mark.parametrize(("tied", "lora"), [(False, False), (True, False), (True, True)])
def test_chunked_loss_and_gradients_equal_the_full_ones(packing, answer_logits, tied, lora):
    arch = Arch(vocab=300, hidden=32, intermediate=64, layers=2, heads=4, kv_heads=2,
                tie_embeddings=tied)  # fmt: skip
    full, chunked = _models(arch, lora)
    batch = batches.train_collate(0, packing, answer_logits)(_rows(4, arch.vocab))
    batch = batches.model_inputs(batch)
    a, b = full(**batch).loss, chunked(**batch).loss
    a.backward()
    b.backward()
    assert b.item() == pytest.approx(a.item(), rel=1e-6)
    for (name, p), q in zip(full.named_parameters(), chunked.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_evaluation_and_generation_keep_the_logits():
    arch = Arch(vocab=300, hidden=32, intermediate=64, layers=2, heads=4, kv_heads=2)
    full, chunked = _models(arch)
    ids = torch.randint(0, arch.vocab, (2, 10))
    full.eval(), chunked.eval()
    with torch.no_grad():
        torch.testing.assert_close(chunked(input_ids=ids).logits, full(input_ids=ids).logits)
        assert chunked(input_ids=ids, labels=ids).logits.shape == (2, 10, arch.vocab)


def _saved_storages(model: torch.nn.Module, batch: dict) -> list[int]:
    """Elements of every storage autograd saves for backward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes() // t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch).loss.backward()
    return list(seen.values())


def test_no_saved_tensor_holds_tokens_by_vocab():
    arch = Arch(vocab=2000, hidden=32, intermediate=64, layers=1, heads=4, kv_heads=2)
    full, chunked = _models(arch)
    rows = [{"input_ids": r["input_ids"], "labels": r["input_ids"]} for r in _rows(4, arch.vocab)]
    batch = batches.model_inputs(batches.train_collate(0, False, False)(rows))
    tokens = batch["input_ids"].numel()
    assert max(_saved_storages(full, batch)) >= tokens * arch.vocab - arch.vocab  # full: logits
    assert max(_saved_storages(chunked, batch)) < tokens * arch.vocab / 10


def _loss_saved_bytes(model: torch.nn.Module, batch: dict) -> tuple[int, int]:
    """(what the loss saves, what the whole forward saves): the forward with the loss, less the
    backbone's own forward to the last hidden states."""
    from sweep.planning.ledger import SavedTensors

    with SavedTensors(model) as whole:
        model(**batch).loss.backward()
    inner = {k: v for k, v in batch.items() if k not in ("labels", "logits_to_keep")}
    with SavedTensors(model) as backbone:
        model.model(**inner).last_hidden_state.sum().backward()
    return whole.bytes - backbone.bytes, whole.bytes


@pytest.mark.slow
def test_the_loss_saves_under_five_percent_of_smollm2s_activations():
    """SmolLM2-135M's shape (49k vocabulary), random weights, 4 x 256 tokens every one labeled:
    the chunked loss's saved bytes against the planner's activations for 4 x 2048 (the share
    does not grow with tokens: both are per token), and against the full loss's."""
    arch = load_arch("smollm2_135m")
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(arch)).train()
    ids = torch.randint(0, arch.vocab, (4, 256))
    batch = {"input_ids": ids, "labels": ids}
    full_loss, _ = _loss_saved_bytes(model, batch)
    loss.use_chunked(model)
    chunked_loss, whole = _loss_saved_bytes(model, batch)
    rec = recipe.of_method(MethodConfig(name="full"), "fp32", cuda=False, loss="chunked")
    s = Settings(batch_size=4, seq_len=256, precision="fp32", padded=False)
    assert chunked_loss == pytest.approx(activations.loss_saved_bytes(arch, s, rec), rel=0.05)
    assert chunked_loss <= 0.05 * whole
    at_2048 = activations.saved_activation_bytes(arch, Settings(batch_size=4, seq_len=2048,
                                                 precision="fp32", padded=False), rec)  # fmt: skip
    assert 8 * chunked_loss <= 0.05 * at_2048
    assert full_loss > 50 * chunked_loss  # [tokens x vocab] fp32 log-probabilities


def test_a_model_that_rescales_its_logits_is_refused():
    arch = Arch(vocab=50, hidden=16, intermediate=32, layers=1, heads=2, kv_heads=2)
    model = LlamaForCausalLM(llama_config(arch))
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ConfigError, match="train.loss_impl=chunked: .*rescales the logits"):
        loss.use_chunked(model)


def test_auto_is_chunked_unless_liger_or_fsdp_decide():
    assert resolve_loss_impl("auto") == "chunked"
    assert resolve_loss_impl("auto", liger=True) == "liger"
    assert resolve_loss_impl("auto", fsdp=True) == "full"
    assert resolve_loss_impl("full", liger=True) == "full"
