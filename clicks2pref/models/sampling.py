"""Drawing the next token: temperature, top-k and top-p as `transformers` applies them, then one inverse-CDF draw.

`model.generate(do_sample=True)` draws with `torch.multinomial`, which on a CPU fills an exponential random
number for every vocabulary entry of every row: 64 rows × 49,152 entries cost ~90 ms per decoding step on
2 cores, a fifth of SmolLM2's step at batch 64. One uniform number per row against the cumulative
probabilities (`searchsorted`) draws from the same distribution in ~2 ms.

`sampling_kwargs` gives `generate` keyword arguments that run its greedy loop with `SampleToken` as the last
logits processor: the processor warps the scores with `transformers`' own warpers, draws the token and
returns scores whose only finite entry is that token, so the greedy step picks it. The distribution is
`do_sample=True`'s; the random stream is not (one number per row instead of one per entry), so the same
seed draws other samples than `multinomial` would.

Common random numbers: `row_uniforms` gives each sampled row its own stream, one uniform number per decoding
step from a generator seeded by (seed, the prompt's key, the sample's index j). Row (key, j)'s draw at step t
is then the same whatever else shares its batch, however many samples of its prompt are drawn, and whichever
policy is sampling: panel j of two policies on one context is coupled, which is what makes their paired
difference tight, and the first panel of a 16-panel evaluation is the 1-panel evaluation's panel.
`Sampler` draws a decoding step's tokens from such numbers (`models.generate.sample_grouped`).
"""
from __future__ import annotations

import hashlib
import json
from typing import Hashable, Sequence

import torch
from torch import Tensor
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


def inverse_cdf_draw(probs: Tensor, uniform: Tensor) -> Tensor:
    """Index drawn from each row of `probs` (B, V) with one uniform number per row (B,) in [0, 1).

    The first index whose cumulative probability exceeds u · total: zero-probability entries are never
    drawn, and the total absorbs the cumulative sum's round-off.
    """
    cdf = probs.cumsum(-1)
    target = (uniform.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


class SampleToken(LogitsProcessor):
    """Last logits processor of a greedy `generate`: samples the token and leaves it the only finite score.

    With top-k on, only the k largest scores can be drawn, so the warping, the softmax and the cumulative sum run
    on those k (taken in vocabulary order, so the cumulative probabilities, and the draw for a given uniform number,
    are the full vector's) instead of on the whole vocabulary: ~1 ms instead of ~30 ms a step at batch 64 on SmolLM2.
    One difference from `TopKLogitsWarper`: scores tied with the k-th largest beyond k are dropped, not kept.
    """

    def __init__(self, temperature: float | None = 1.0, top_k: int | None = None, top_p: float | None = None):
        self.top_k = top_k or 0
        temperature_warper = [TemperatureLogitsWarper(temperature)] if temperature not in (None, 1.0) else []
        top_p_warper = [TopPLogitsWarper(top_p)] if top_p is not None and top_p < 1.0 else []
        top_k_warper = [TopKLogitsWarper(top_k)] if top_k else []
        self.warpers = LogitsProcessorList(temperature_warper + top_p_warper)  # on the top k only
        self.full_warpers = LogitsProcessorList(temperature_warper + top_k_warper + top_p_warper)  # transformers' order

    def draw(self, scores: Tensor, uniform: Tensor, input_ids: Tensor | None = None) -> Tensor:
        """The token of each row (B,) for the scores (B, V) and one uniform number per row (B,)."""
        scores_f = scores.float()
        if 0 < self.top_k < scores.shape[-1]:
            index = scores_f.topk(self.top_k, dim=-1).indices.sort(dim=-1).values  # the top k, in vocabulary order
            probs = self.warpers(input_ids, scores_f.gather(-1, index)).softmax(-1)
            return index.gather(-1, inverse_cdf_draw(probs, uniform).unsqueeze(-1)).squeeze(-1)
        return inverse_cdf_draw(self.full_warpers(input_ids, scores_f).softmax(-1), uniform)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        tokens = self.draw(scores, torch.rand(scores.shape[0], device=scores.device), input_ids)
        return torch.full_like(scores, float("-inf")).scatter_(-1, tokens.unsqueeze(-1), 0.0)


class Sampler:
    """A decoding step's tokens from its logits (B, V) and each row's uniform number (B,): `SampleToken`'s draw,
    or the argmax when sampling is off (`do_sample=False`: the numbers are not read)."""

    def __init__(self, do_sample: bool = True, temperature: float | None = 1.0, top_k: int | None = None,
                 top_p: float | None = None):
        self.do_sample = do_sample
        self.token = SampleToken(temperature, top_k, top_p) if do_sample else None

    def __call__(self, scores: Tensor, uniform: Tensor) -> Tensor:
        if self.token is None:
            return scores.argmax(-1)
        return self.token.draw(scores, uniform.to(scores.device))


def row_seed(seed: int, key: Hashable, sample: int) -> int:
    """The seed of sample `sample` of the prompt keyed `key` (a string, a number, or a list or tuple of them: a list
    and a tuple with the same items are one key) under `seed`; stable across processes and runs."""
    digest = hashlib.sha256(json.dumps([seed, key, sample]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def row_uniforms(seed: int, keys: Sequence[Hashable], samples: Sequence[int], steps: int) -> Tensor:
    """(len(keys), steps) uniform numbers in [0, 1): row r's are its own stream, seeded by (seed, keys[r],
    samples[r]), one number per decoding step."""
    out = torch.empty(len(keys), steps)
    for r, (key, j) in enumerate(zip(keys, samples)):
        out[r] = torch.rand(steps, generator=torch.Generator().manual_seed(row_seed(seed, key, j)))
    return out


def sampling_kwargs(temperature: float | None = 1.0, top_k: int | None = None, top_p: float | None = None) -> dict:
    """`generate` keyword arguments that sample with `SampleToken` (the model's own sampling settings off)."""
    return dict(do_sample=False, temperature=None, top_p=None, top_k=None,
                logits_processor=LogitsProcessorList([SampleToken(temperature, top_k, top_p)]))


def greedy_kwargs() -> dict:
    """`generate` keyword arguments for greedy decoding (the model's own sampling settings off)."""
    return dict(do_sample=False, temperature=None, top_p=None, top_k=None)
