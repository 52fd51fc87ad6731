"""The training tokenizer: loaded by :mod:`xtune.hf.load` (pad-token rule included), with the chat template
a config asks for."""

from xtune.dataset.templates import set_chat_template
from xtune.hf.load import load_tokenizer


def load_tokenizer_with_template(path: str, prompt_template: str = "auto", trust_remote_code: bool = False):
    """Load ``path``'s tokenizer and install ``prompt_template`` (``auto`` keeps its own).

    Raises:
        ConfigError: The tokenizer cannot be loaded, or the template is unknown.
    """
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    set_chat_template(tokenizer, prompt_template)
    return tokenizer
