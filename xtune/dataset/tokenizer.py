"""Load a tokenizer and give it the chat template a config asks for."""

from pathlib import Path

from transformers import AutoTokenizer

from xtune.dataset.templates import set_chat_template
from xtune.errors import ConfigError


def load_tokenizer(path: str, prompt_template: str = "auto", trust_remote_code: bool = False):
    """Load ``path``'s tokenizer and install ``prompt_template`` (``auto`` keeps its own).

    Raises:
        ConfigError: The tokenizer cannot be loaded, or the template is unknown.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        where = "directory" if Path(path).exists() else "model name (no such local directory)"
        raise ConfigError(
            f"cannot load a tokenizer from {where} '{path}': {str(exc).splitlines()[0]}. "
            "Set pretrained_model_name_or_path to a Hugging Face model directory or hub name."
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    set_chat_template(tokenizer, prompt_template)
    return tokenizer
