"""Chatting with a model: conversations rendered with the training chat template, stop words, loading.

- :mod:`xtune.chat.session`: :class:`ChatSession`, one multi-turn conversation.
- :mod:`xtune.chat.stopping`: where an answer ends, and a streamer that never prints stop words.
- :mod:`xtune.chat.loading`: a model folder (plus adapter) or a training checkpoint, ready to chat.
"""

from xtune.chat.session import ChatSession, GenerationSettings
from xtune.chat.stopping import StopWordStreamer, template_stop_words

__all__ = ["ChatSession", "GenerationSettings", "StopWordStreamer", "template_stop_words"]
