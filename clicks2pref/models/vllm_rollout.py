"""GRPO rollouts on vLLM, on the GPU the policy trains on (TRL's `use_vllm` with `vllm_mode="colocate"`).

Sampling dominates a GRPO step, and transformers' `generate` leaves a GPU mostly idle at these batch sizes.
vLLM samples instead: the engine lives in the training process (`external_launcher`, so its weights are
reachable), the policy's weights, LoRA folded in, are pushed into it whenever an optimiser step changed them,
and vLLM returns token ids only (no tokenizer of its own: prompts arrive as ids). Log-probs, references and
the update stay with the trained model, as in TRL. Install with `pip install "clicks2pref[vllm]"`; needs CUDA.
"""
from __future__ import annotations

import os
import socket
from typing import Iterator, Optional, Sequence

import torch

from clicks2pref.errors import ConfigError
from clicks2pref.models.adapters import merged_adapters


def vllm_named_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under its plain transformers names (what vLLM's `load_weights` reads).

    For a peft model, call it with the adapters merged (`merged_adapters`): the LoRA factors themselves are
    skipped, and `base_model.model.` / `.base_layer` are dropped from the names. Tied weights come once.
    """
    peft_prefix = getattr(model, "prefix", None) if hasattr(model, "peft_config") else None
    for name, param in model.named_parameters():
        if peft_prefix is not None:
            name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            if peft_prefix in name or "original_module" in name:
                continue
            name = name.replace("modules_to_save.default.", "")
        yield name, param.detach()


def base_folder(model) -> str:
    """The folder or hub id the engine starts from (its weights are replaced at the first sync)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = getattr(base, "name_or_path", None) or getattr(base.config, "_name_or_path", "")
    if not name:
        raise ConfigError("the policy records no folder or hub id for vLLM to start from", "grpo.use_vllm")
    return name


class VLLMRollout:
    """A colocated vLLM engine that samples for GRPO; `version` says which weights it holds."""

    def __init__(self, model, gpu_memory_utilization: float, max_model_length: Optional[int], seed: int):
        if not all(p.is_floating_point() for p in model.parameters()):  # bitsandbytes stores 4/8-bit as ints
            raise ConfigError("vLLM rollouts need an unquantised policy (8- or 4-bit weights cannot be pushed into "
                              "the engine); drop policy.model.quantization", "grpo.use_vllm")
        if not torch.cuda.is_available():
            raise ConfigError("vLLM rollouts need a CUDA GPU (and trainer=gpu)", "grpo.use_vllm")
        try:
            from vllm import LLM
        except ImportError as err:
            raise ConfigError(f"vllm is not installed ({err}); pip install \"clicks2pref[vllm]\"",
                              "grpo.use_vllm") from err
        # one process, one engine: vLLM's external launcher reads the torch.distributed variables; a free port,
        # so that jobs of a sweep sharing a node never meet at the same rendezvous
        for var, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(var, value)
        if "MASTER_PORT" not in os.environ:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
        dtype = next(model.parameters()).dtype
        self.llm = LLM(model=base_folder(model), dtype=str(dtype).removeprefix("torch."), seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_length,
                       distributed_executor_backend="external_launcher", skip_tokenizer_init=True,
                       enable_prefix_caching=True, max_num_batched_tokens=4096)
        self.version: Optional[int] = None

    def sync(self, model, version: int) -> None:
        """Push the policy's current weights (adapters folded in) unless the engine holds `version` already."""
        if version == self.version:
            return
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        with merged_adapters(model):
            engine_model.load_weights(vllm_named_weights(model))
        self.llm.reset_prefix_cache()  # cached prefixes hold the old weights' keys and values
        self.version = version

    def generate(self, prompts: Sequence[list[int]], n: int, max_tokens: int, end_ids: set[int],
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, greedy: bool = False
                 ) -> tuple[list[list[int]], list[bool]]:
        """n completions per prompt, grouped: token ids up to and including the end token, and whether each
        ended (False = cut at max_tokens), as `GRPOModule.sample` returns them."""
        from vllm import SamplingParams

        params = SamplingParams(n=n, max_tokens=max_tokens, stop_token_ids=sorted(end_ids), ignore_eos=True,
                                temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
                                top_k=-1 if greedy or top_k == 0 else top_k, detokenize=False)
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        completions, ended = [], []
        for out in outputs:
            for sample in out.outputs:
                ids = list(sample.token_ids)
                stopped = sample.finish_reason == "stop"
                if stopped and (not ids or ids[-1] not in end_ids) and isinstance(sample.stop_reason, int):
                    ids.append(sample.stop_reason)  # the end token, kept as transformers' generate keeps it
                completions.append(ids)
                ended.append(stopped)
        return completions, ended
