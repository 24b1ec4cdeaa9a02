"""PEFT LoRA adapters: read `adapter_config.json` + `adapter_model.{safetensors,bin}` and merge them into weights.

PEFT saves one pair per adapted linear layer, without the adapter name:
    base_model.model.<module>.lora_A.weight   [r, in]
    base_model.model.<module>.lora_B.weight   [out, r]
and merging (`merge_and_unload`) adds  scale * B @ A  to `<module>.weight` [out, in], with
scale = lora_alpha / r  (lora_alpha / sqrt(r) when `use_rslora`), r and alpha per module when `rank_pattern` /
`alpha_pattern` name it. `fan_in_fan_out` layers store W transposed, so the update is transposed too.
The merge is computed in float32 and cast back to the weight's dtype, as PEFT does for half-precision weights.

Adapter features that change the maths (DoRA, trained biases, embedding LoRA, modules_to_save) are refused
with a CheckpointError rather than merged wrongly.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from unipose_sdk.errors import CheckpointError

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."
_PAIR_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.default)?\.weight$")
_MAX_LISTED = 20


@dataclass(frozen=True)
class LoraConfig:
    r: int
    lora_alpha: float
    target_modules: tuple[str, ...] = ()
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)

    def _lookup(self, pattern: Mapping[str, float], module: str, default: float) -> float:
        # PEFT matches a pattern key against the end of the module name on a "." boundary.
        for key, value in pattern.items():
            if re.match(rf"(.*\.)?{key}$", module):
                return value
        return default

    def rank_for(self, module: str) -> int:
        return int(self._lookup(self.rank_pattern, module, self.r))

    def scale_for(self, module: str) -> float:
        rank = self.rank_for(module)
        alpha = self._lookup(self.alpha_pattern, module, self.lora_alpha)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank


def read_adapter_config(directory: Path) -> LoraConfig:
    path = directory / ADAPTER_CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError.make(f"no {ADAPTER_CONFIG_FILE} in {directory}",
                                   "the PEFT adapter config of the UniPose release",
                                   "Pass the UniPose directory as downloaded (it holds the LoRA adapter).") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError) as exc:
        raise CheckpointError.make(f"{path} that is not valid JSON ({type(exc).__name__}: {exc})",
                                   "a PEFT adapter config", "Re-download the UniPose directory.") from None
    if not isinstance(data, dict):
        raise CheckpointError.make(f"{path} holding a JSON {type(data).__name__}", "a PEFT adapter config object",
                                   "Re-download the UniPose directory.")
    _check_adapter_types(data, path)
    problems = []
    if data.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type={data.get('peft_type')!r}")
    if data.get("use_dora"):
        problems.append("use_dora=true")
    if data.get("bias", "none") != "none":
        problems.append(f"bias={data.get('bias')!r}")
    if data.get("modules_to_save"):
        problems.append(f"modules_to_save={data.get('modules_to_save')!r}")
    if problems:
        raise CheckpointError.make(f"adapter config {path} with {', '.join(problems)}",
                                   "a plain LoRA adapter (peft_type LORA, no DoRA, bias 'none', no modules_to_save)",
                                   "Merge this adapter with PEFT, save the merged model, and convert it with --merged.")
    target = data.get("target_modules") or ()
    return LoraConfig(
        r=data["r"], lora_alpha=float(data["lora_alpha"]),
        target_modules=tuple([target] if isinstance(target, str) else target),
        use_rslora=bool(data.get("use_rslora", False)), fan_in_fan_out=bool(data.get("fan_in_fan_out", False)),
        rank_pattern=dict(data.get("rank_pattern") or {}), alpha_pattern=dict(data.get("alpha_pattern") or {}),
    )


def _is_rank(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_alpha(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_adapter_types(data: dict, path: Path) -> None:
    """The fields the merge uses, by type and range: a wrong one would scale every adapted weight wrongly."""
    checks = [
        ("r", data.get("r"), _is_rank(data.get("r")), "an integer >= 1"),
        ("lora_alpha", data.get("lora_alpha"), _is_alpha(data.get("lora_alpha")), "a finite number"),
        ("target_modules", data.get("target_modules"),
         data.get("target_modules") is None or isinstance(data.get("target_modules"), str)
         or (isinstance(data.get("target_modules"), list) and all(isinstance(t, str) for t in data["target_modules"])),
         "a module name or a list of them"),
        ("rank_pattern", data.get("rank_pattern"),
         data.get("rank_pattern") is None or (isinstance(data.get("rank_pattern"), dict)
                                              and all(_is_rank(v) for v in data["rank_pattern"].values())),
         "an object of module pattern -> integer rank >= 1"),
        ("alpha_pattern", data.get("alpha_pattern"),
         data.get("alpha_pattern") is None or (isinstance(data.get("alpha_pattern"), dict)
                                               and all(_is_alpha(v) for v in data["alpha_pattern"].values())),
         "an object of module pattern -> finite alpha"),
    ] + [(flag, data.get(flag), isinstance(data.get(flag, False), bool), "true or false")
         for flag in ("use_rslora", "fan_in_fan_out")]
    for name, value, ok, expected in checks:
        if not ok:
            raise CheckpointError.make(f"adapter config {path} with {name} = {value!r} ({type(value).__name__})",
                                       expected, "Re-download the UniPose directory; the adapter config is damaged.")


def adapter_weights_path(directory: Path) -> Path:
    for name in ADAPTER_WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError.make(f"none of {list(ADAPTER_WEIGHT_FILES)} in {directory}",
                               "the LoRA adapter weights of the UniPose release",
                               "Pass the UniPose directory as downloaded.")


def lora_pairs(adapter: Mapping[str, Tensor], source: str) -> dict[str, tuple[Tensor, Tensor]]:
    """Adapter state dict -> {module name without the PEFT prefix: (A [r, in], B [out, r])}."""
    halves: dict[str, dict[str, Tensor]] = {}
    other = []
    for key, tensor in adapter.items():
        match = _PAIR_RE.match(key)
        if match is None:
            other.append(key)
            continue
        module = match["module"]
        module = module.removeprefix(PEFT_PREFIX)
        halves.setdefault(module, {})[match["which"]] = tensor
    unpaired = sorted(m for m, h in halves.items() if len(h) != 2)
    if other or unpaired:
        parts = []
        if other:
            parts.append(f"{len(other)} keys that are not lora_A / lora_B weights: {sorted(other)[:_MAX_LISTED]}")
        if unpaired:
            parts.append(f"{len(unpaired)} modules with only one of lora_A / lora_B: {unpaired[:_MAX_LISTED]}")
        raise CheckpointError.make(f"adapter {source} with " + "; ".join(parts),
                                   "one lora_A and one lora_B weight per adapted linear layer",
                                   "Check that the adapter file is complete and is a LoRA adapter.")
    return {m: (h["A"], h["B"]) for m, h in halves.items()}


def merge_lora(weights: dict[str, Tensor], pairs: Mapping[str, tuple[Tensor, Tensor]], config: LoraConfig,
               key_for_module: Callable[[str], str | None], source: str) -> list[str]:
    """Add scale * B @ A to each adapted weight in `weights` (in place in the dict); returns the merged keys.

    `key_for_module` maps an adapter module name (e.g. "model.layers.0.self_attn.q_proj") to the key of its
    weight in `weights`, or None when it maps nowhere. Nothing is merged unless every pair is valid.
    """
    plan, nowhere, bad = [], [], []
    for module in sorted(pairs):
        a, b = pairs[module]
        key = key_for_module(module)
        if key is None or key not in weights:
            nowhere.append(f"{module} (-> {key})" if key else module)
            continue
        w_shape = tuple(weights[key].shape)
        out_in = (w_shape[1], w_shape[0]) if config.fan_in_fan_out else w_shape
        rank = config.rank_for(module)
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != rank or b.shape[1] != rank or \
                (b.shape[0], a.shape[1]) != out_in:
            bad.append(f"{module}: A {tuple(a.shape)}, B {tuple(b.shape)}, weight {w_shape}, r {rank}")
            continue
        plan.append((module, key))
    if nowhere or bad:
        parts = []
        if nowhere:
            parts.append(f"{len(nowhere)} adapted modules that map to no weight: {nowhere[:_MAX_LISTED]}")
        if bad:
            parts.append(f"{len(bad)} pairs whose shapes do not fit: {bad[:_MAX_LISTED]}")
        raise CheckpointError.make(f"LoRA adapter {source} with " + "; ".join(parts),
                                   "lora_A [r, in] and lora_B [out, r] for weights [out, in] of the base model",
                                   "Check that the adapter belongs to this base model and preset.")
    for module, key in plan:
        a, b = pairs[module]
        weight = weights[key]
        delta = (b.float() @ a.float()) * config.scale_for(module)
        if config.fan_in_fan_out:
            delta = delta.T
        weights[key] = (weight.float() + delta).to(weight.dtype)
    return [key for _, key in plan]


def peft_adapter_state(pairs: Mapping[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """Inverse of lora_pairs, in PEFT's on-disk naming (used to write test fixtures and round trips)."""
    state = {}
    for module, (a, b) in pairs.items():
        state[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a
        state[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b
    return state

