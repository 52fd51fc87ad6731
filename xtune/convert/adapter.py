"""Attach a PEFT adapter folder to a base model, failing clearly when it was made for another model."""

import json
import pickle
import re
import sys
from pathlib import Path

from xtune.errors import CheckpointError, refused_pickle

_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def read_adapter_config(adapter_dir: str | Path) -> dict:
    """The adapter's ``adapter_config.json``.

    Raises:
        CheckpointError: ``adapter_dir`` is missing, has no adapter config or weights, or the config is
            not JSON.
    """
    folder = Path(adapter_dir)
    how = "Make one with `xtune convert pth_to_hf CONFIG CHECKPOINT SAVE_DIR` from a LoRA run."
    if not folder.is_dir():
        raise CheckpointError(f"adapter folder not found: {folder}. {how}")
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        has_model = (folder / "config.json").is_file()
        what = " (it holds a full model: use it as the model, without --adapter/merge)" if has_model else ""
        raise CheckpointError(f"{folder} is not a PEFT adapter folder: it has no adapter_config.json{what}. {how}")
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise CheckpointError(f"{folder} has an adapter_config.json but no adapter_model.safetensors. {how}")
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_file} is not valid JSON ({exc}).") from None


def attach_adapter(base_model, adapter_dir: str | Path, base_name: str = "the base model"):
    """Wrap ``base_model`` with the adapter in ``adapter_dir``, checking every adapter weight fits it.

    Args:
        base_model: A transformers causal LM, modified in place by PEFT.
        adapter_dir: A PEFT adapter folder.
        base_name: How messages name the base model.

    Returns:
        The ``PeftModel``, in eval mode.

    Raises:
        CheckpointError: The adapter's target modules are not in the model, its weights have other shapes,
            or some of its weights have no place in the model.
    """
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict, load_peft_weights

    settings = read_adapter_config(adapter_dir)
    trained_on = settings.get("base_model_name_or_path") or "an unrecorded model"
    fix = f"The adapter was trained on {trained_on}; pass that model as the base."
    _warn_if_other_base(trained_on, getattr(base_model, "name_or_path", ""), adapter_dir)
    try:
        weights = load_peft_weights(str(adapter_dir), device="cpu")
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        what = refused_pickle(exc)
        problem = f"holds {what}, which is refused (loading it could run code)" if what else f"cannot be read ({exc})"
        raise CheckpointError(
            f"the adapter {adapter_dir}: its weights file {problem}. Use an adapter saved as safetensors "
            "(xtune convert pth_to_hf writes one)."
        ) from None
    try:
        model = PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=False)
    except (ValueError, RuntimeError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"the adapter {adapter_dir} does not fit {base_name}: {_reason(exc)}. {fix}") from None
    expected = get_peft_model_state_dict(model)
    unused = [key for key in weights if key not in expected]
    if unused:
        raise CheckpointError(
            f"the adapter {adapter_dir} does not fit {base_name}: {len(unused)} of its {len(weights)} "
            f"weights have no place in the model, e.g. '{unused[0]}'. {fix}"
        )
    wrong = [key for key, value in weights.items() if tuple(value.shape) != tuple(expected[key].shape)]
    if wrong:
        key = wrong[0]
        raise CheckpointError(
            f"the adapter {adapter_dir} does not fit {base_name}: '{key}' is {tuple(weights[key].shape)} in "
            f"the adapter but {tuple(expected[key].shape)} in the model. {fix}"
        )
    return model.eval()


_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch.Size\(\[([^\]]*)\]\) from checkpoint, "
    r"the shape in current model is torch.Size\(\[([^\]]*)\]\)"
)


def _reason(exc: Exception) -> str:
    """One line out of PEFT's and torch's loading errors (which list every mismatched weight)."""
    text = str(exc).strip()
    mismatches = _SIZE_MISMATCH.findall(text)
    if mismatches:
        name, ours, theirs = mismatches[0]
        name = name.removeprefix("base_model.model.").replace(".default.", ".")
        differ = f"{len(mismatches)} weights differ"
        return f"'{name}' is [{ours}] in the adapter but [{theirs}] in the model ({differ})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__).rstrip(".:")[:300]


def _same_model(a: str, b: str) -> bool:
    if Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return a.rstrip("/") == b.rstrip("/")


def _warn_if_other_base(trained_on: str, base: str, adapter_dir: str | Path) -> None:
    """Only a warning: the base model may have been moved or copied since training."""
    if trained_on != "an unrecorded model" and base and not _same_model(trained_on, base):
        print(
            f"xtune: warning: the adapter {adapter_dir} was trained on {trained_on}, not {base}.",
            file=sys.stderr,
        )
