"""The one conversation schema every data format is converted into.

A *conversation sample* is a plain dict, the shape ``tokenizer.apply_chat_template`` takes::

    {
        "messages": [
            {"role": "system", "content": "You are ..."},            # optional, first only
            {"role": "user", "content": "What is the weather?"},
            {"role": "assistant", "content": "",                      # content may be "" with tool_calls
             "tool_calls": [{"type": "function",
                             "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "{\"temp\": 21}"},
            {"role": "assistant", "content": "It is 21 degrees."},
        ],
        "tools": [ {"type": "function", "function": {"name": ..., "description": ..., "parameters": {...}}} ]
                 or None,
    }

Roles are ``system``, ``user``, ``assistant`` and ``tool``. ``arguments`` is a dict (templates
serialise it). The last message of an SFT sample is an assistant message.

A *pretraining sample* is ``{"text": str}``.

A *preference sample* is ``{"messages": [... prompt, ending with a user message],
"chosen": {"role": "assistant", ...}, "rejected": {"role": "assistant", ...}, "tools": ... }``.
"""

ROLES = ("system", "user", "assistant", "tool")
