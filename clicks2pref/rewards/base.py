"""What every reward component shares: the batch it scores and the examination-weighted panel score.

A `RewardBatch` is N completions, each with the logged conversation it answers. Components read the
parsed panels (`clicks2pref.data.parsing.parse_suggestions`, the one parser), and the `ppl` component
reads `ref_log_ppl` when the caller already has the reference log-probabilities (GRPO computes them
for the KL term anyway).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from clicks2pref.config.rewards import PANELS  # noqa: F401 (re-exported)
from clicks2pref.data.parsing import Parsed, parse_suggestions
from clicks2pref.errors import ConfigError, ModelNotFoundError
from clicks2pref.manifest import verify_given
from clicks2pref.models.reward_heads import load_reward_model
from clicks2pref.models.score_cache import context_key  # noqa: F401 (re-exported)
from clicks2pref.models.score_cache import SuggestionScorer, score_store

@dataclass
class RewardBatch:
    contexts: list[list[dict]]  # the logged conversation of each completion (ends with the assistant turn)
    completions: list[str]  # policy outputs, "1. ...\n2. ...\n3. ..." when well formed
    k: int = 3  # suggestions per panel
    ref_log_ppl: Optional[Tensor] = None  # mean token NLL of each completion under the reference, if known

    def __post_init__(self):
        if len(self.contexts) != len(self.completions):
            raise ValueError(f"{len(self.contexts)} contexts for {len(self.completions)} completions")

    def __len__(self) -> int:
        return len(self.completions)

    @cached_property
    def parsed(self) -> list[Parsed]:
        return [parse_suggestions(c, self.k) for c in self.completions]

    @property
    def panels(self) -> list[list[str]]:
        return [p.suggestions for p in self.parsed]


def last_user_turn(context: list[dict]) -> str:
    return next((t["content"] for t in reversed(context) if t["role"] == "user"), "")


def panel_scores(values: Sequence[Sequence[float]], examination: Sequence[float],
                 missing_score: float, panel: str = "mean",
                 discounts: Optional[Sequence[Sequence[float]]] = None) -> Tensor:
    """The panel's score from its suggestions' scores, over the K = len(examination) positions.

    `mean`: Σ_k e_k s_k / Σ_k e_k, an empty position scoring `missing_score` (SPEC 5.5), so a panel of
    two good suggestions is worth less than three. `click`: the scores are click probabilities a_k and
    the panel's score is P(at least one click) = 1 − Π_k (1 − e_k g_k a_k), an empty position adding
    nothing; g_k are `discounts` (the redundancy term, `rewards.redundancy.redundancy_discounts`; 1 when None).
    """
    if panel not in PANELS:
        raise ConfigError(f"'{panel}' is not one of {', '.join(PANELS)}", "rewards.panel")
    e = torch.tensor(list(examination), dtype=torch.float64)
    out = torch.empty(len(values), dtype=torch.float64)
    for i, v in enumerate(values):
        n = min(len(v), len(e))
        s = torch.as_tensor(list(v)[:n], dtype=torch.float64)
        if panel == "click":
            if discounts is not None:
                s = s * torch.as_tensor(list(discounts[i])[:n], dtype=torch.float64)
            out[i] = 1 - torch.prod(1 - e[:n] * s) if n else 0.0
            continue
        full = torch.full((len(e),), float(missing_score), dtype=torch.float64)
        full[:n] = s
        out[i] = (e * full).sum() / e.sum()
    return out


def resolve_examination(configured: Optional[Sequence[float]], model, component: str) -> list[float]:
    """The position weights of a component: the configured list, else the reward model's learned e_k."""
    if configured is not None:
        return list(configured)
    learned = getattr(model, "examination", None)
    if learned is None:
        raise ConfigError(f"is null (take e_k from the reward model), but the {component} model was not trained as "
                          f"a click model and has none: set rewards.examination (e.g. [0.9, 0.6, 0.4]) or train "
                          f"with reward_model.objective=click_model", f"rewards.{component}.examination")
    return list(learned)


def map_panels(rows: list[list[dict]], fn: Callable[[dict[str, Tensor]], Tensor]) -> list[list[float]]:
    """`fn` applied to the cached outputs of every suggestion at once, in the panels' shape."""
    flat = [v for row in rows for v in row]
    values = fn({k: torch.tensor([v[k] for v in flat]) for k in flat[0]}).tolist() if flat else []
    out, start = [], 0
    for row in rows:
        out.append(values[start:start + len(row)])
        start += len(row)
    return out


class RewardResources:
    """What components need beyond their own config, handed to each component's `setup`.

    `reward_models`: kind ("garm", "btrm") -> folder written by stage=rm, or an already loaded model
    (anything with a `kind` and `.score(contexts, suggestions, batch_size)` returning its head's outputs,
    {"mu", "sigma"} or {"reward"}, per suggestion); each is loaded once and shared
    (the `btrm` and `external` components use one BTRM). `reference`: a callable (contexts, completions)
    -> mean token NLL of each completion under the reference policy, for the `ppl` component.
    A folder is checked against its manifest first; `trust_remote_code` is the user's switch only.
    """

    def __init__(self, reward_models: Optional[dict] = None, reference: Optional[Callable] = None,
                 cache_dir: Optional[str] = None, trust_remote_code: bool = False):
        self.reward_models = dict(reward_models or {})
        self.reference, self.cache_dir, self.trust_remote_code = reference, cache_dir, trust_remote_code
        self._loaded: dict = {}
        self._scorers: dict = {}
        self.similarities: dict = {}  # embedder -> PanelSimilarity, shared by the components that compare texts

    def scorer(self, key, score_fn: Callable) -> "SuggestionScorer":
        """One cached SuggestionScorer per key, so components scoring with the same model share its cache. A key
        (kind, path) names a reward model: when it is a trained rm artifact, the cache is its on-disk score cache
        too (`models.score_cache.score_store`), shared with every other run and evaluation that scores with it."""
        if key not in self._scorers:
            kind, path = key if isinstance(key, tuple) and len(key) == 2 else (None, None)
            source = path or (self.reward_models.get(kind) if kind else None)
            self._scorers[key] = SuggestionScorer(score_fn, store=score_store(source))
        return self._scorers[key]

    def reward_model(self, kind: str, path: Optional[str] = None):
        key = path or kind
        if key not in self._loaded:
            source = path or self.reward_models.get(kind)
            if source is None:
                raise ConfigError(f"the {kind} reward needs a trained {kind}: run stage=rm with {kind} in "
                                  f"reward_model.kinds, or set rewards.<component>.path to its folder")
            if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
                source = load_checked(source, self.cache_dir, self.trust_remote_code)
            self._loaded[key] = source
        return self._loaded[key]


def load_checked(folder, cache_dir: Optional[str], trust_remote_code: bool):
    """A reward-model folder verified against its manifest (when it has one), loaded, or one clear error."""
    problem = verify_given(Path(folder))
    if problem:
        raise ModelNotFoundError(f"reward model {folder} fails verification: {problem}")
    try:
        return load_reward_model(folder, cache_dir, trust_remote_code=trust_remote_code)
    except ModelNotFoundError:
        raise
    except Exception as e:  # a truncated or foreign file: one line, not a traceback from deep inside torch
        raise ModelNotFoundError(f"reward model {folder} does not load: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}") from None

