"""Built-in chat templates: one table of HF-style Jinja templates.

A config picks a template with ``prompt_template``. ``auto`` keeps the tokenizer's own
``chat_template``; a built-in name installs ``TEMPLATES[name].jinja`` as the tokenizer's
``chat_template``, so training, chat and the exported model all render through
``tokenizer.apply_chat_template`` with the same text. Each template reproduces the output of its
family's official template (whitespace, newlines, BOS) unless the legend says otherwise.

=========  ==========================================  =====================================  =====
name       models                                      stop words                             tools
=========  ==========================================  =====================================  =====
default    any base model: "User: ...\\nAssistant: ..."  "\\nUser:" (+ the tokenizer's EOS)       no
chatml     generic ChatML (no default system prompt)   <|im_end|>                             no
qwen2_5    Qwen2.5-Instruct (default system prompt)    <|im_end|> <|endoftext|>               yes
qwen3      Qwen3 (hybrid thinking)                     <|im_end|> <|endoftext|>               yes
llama3     Llama-3.1 / 3.2 / 3.3 Instruct              <|eot_id|> <|eom_id|> <|end_of_text|>  yes
llama2     Llama-2-chat                                </s>                                   no
mistral    Mistral-7B-Instruct-v0.3 ([INST])           </s>                                   no
internlm2  InternLM2 / InternLM2.5 chat                <|im_end|> </s>                        no
gemma      Gemma / Gemma 2 instruct                    <end_of_turn> <eos>                    no
phi3       Phi-3 / Phi-3.5-mini-instruct               <|end|> <|endoftext|>                  no
glm4       glm-4-9b-chat                               <|endoftext|> <|user|> <|observation|> no
deepseek   DeepSeek-R1-Distill-Qwen / -Llama           <｜end▁of▁sentence｜>                  no
yi         Yi-1.5 chat                                 <|im_end|> <|endoftext|>               no
llava      LLaVA-1.5 / vicuna v1 (USER: ASSISTANT:)    </s>                                   no
=========  ==========================================  =====================================  =====

Notes; *differs* marks where a template knowingly departs from the official one:

- ``qwen3``: as officially, the assistant turn after the last user query gets a (possibly empty)
  ``<think>`` block and earlier turns lose their reasoning (``keep_history_reasoning=True`` keeps it).
- ``llama3``: Llama 3.1/3.3's default date "26 Jul 2024" unless ``date_string`` is passed (3.2's template
  uses today's date, which would make training data depend on the day). Tool results are JSON-quoted as
  officially. *differs*: ``builtin_tools`` (brave_search, wolfram_alpha) are not rendered.
- ``mistral`` *differs*: the system prompt goes before the *last user* message, as mistral_common encodes
  it. The HF Jinja only does this when that user message is the last message, so it drops the system
  prompt from every conversation that ends with an assistant turn (every training sample).
- ``gemma`` *differs*: Gemma and Gemma 2 have no system role and their template raises on one. Here a
  system message is folded into the first user turn (``system + "\\n\\n" + user``), as Gemma 3's
  official template does; conversations without a system message render exactly as officially.
- ``glm4``: as officially, assistant turns have no end token; the next ``<|user|>`` ends them.
- ``deepseek``: as officially, everything up to ``</think>`` is dropped from earlier assistant turns and
  the generation prompt opens a ``<think>`` block. *differs*: the assistant turns after the last user
  query keep their reasoning, as ``<think>\\n{reasoning}\\n</think>{answer}`` right after that generation
  prompt, so that reasoning traces train (as Qwen3's official template does; prompts for generation
  render exactly as officially); ``keep_history_reasoning=True`` keeps it in earlier turns too. Tool
  messages raise (the official template needs string arguments and drops tool calls that come with
  content).
- ``llava``: LLaVA-1.5's training format (vicuna v1): ``{system} USER: {user} ASSISTANT: {reply}</s>USER: ...``;
  images are ``<image>`` markers in the user text (``<image>\\n`` before the question, as llava-hf's template
  writes them). No default system prompt. A prompt for generation renders exactly as llava-hf's template
  (``USER: <image>\\nWhat is this? ASSISTANT:``). *differs*: llava-hf's template ends an assistant turn
  with a space; here it ends with EOS (``</s>``), as LLaVA-1.5 trained, so the model learns to stop.
- ``default``, ``llama2``, ``mistral``, ``gemma``, ``deepseek`` and ``llava`` raise on roles they cannot write;
  ``supports_tools`` says which templates render tools (check it before rendering tool samples).
"""

import difflib
from dataclasses import dataclass

from xtune.errors import ConfigError


@dataclass(frozen=True)
class ChatTemplate:
    """One built-in chat template.

    Attributes:
        name: Key in :data:`TEMPLATES` and value of a config's ``prompt_template``.
        jinja: HF ``chat_template`` text, rendered by ``tokenizer.apply_chat_template``.
        stop_words: Strings that end an assistant turn at generation time.
        legend: One line: which models use it, and notes.
        supports_tools: Whether ``tools``, assistant ``tool_calls`` and ``tool`` messages render.
        requires: Tokenizer special tokens the template reads (``bos_token``, ``eos_token``).
    """

    name: str
    jinja: str
    stop_words: tuple[str, ...]
    legend: str
    supports_tools: bool
    requires: tuple[str, ...] = ()


# Templates whose official form has no tool or extra roles raise on them (NAME is the template name);
# apply_chat_template surfaces the message.
_USER_ASSISTANT_ONLY = r"""
    {%- if m.role not in ['user', 'assistant'] or m.tool_calls %}
        {{- raise_exception('The NAME template writes only user and assistant messages after an optional '
            'first system message, got a ' + m.role + ' message or tool calls.') }}
    {%- elif (m.role == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('The NAME template needs user and assistant turns to alternate, user first.') }}
    {%- endif %}"""


def _only_user_assistant(template: str) -> str:
    return _USER_ASSISTANT_ONLY.replace("NAME", template)


_DEFAULT = r"""
{%- if bos_token %}{{ bos_token }}{% endif %}
{%- for m in messages %}
    {%- if m.role == 'system' %}{{ m.content + '\n\n' }}
    {%- elif m.role == 'user' %}{{ 'User: ' + m.content + '\n' }}
    {%- elif m.role == 'assistant' and not m.tool_calls %}
        {{- 'Assistant: ' + m.content + eos_token + '\n' }}
    {%- else %}
        {{- raise_exception('The default template writes system, user and assistant messages, not tool '
            'messages or tool calls.') }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"""

_CHATML_TURNS = r"""
{%- for m in messages %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{% endfor %}
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"""

# Shared by Qwen2.5 and Qwen3: the tool list in the system turn, calls and tool results.
_QWEN_TOOL_LIST = r"""
    {{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n'
        'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
    {%- for tool in tools %}{{ '\n' + tool | tojson }}{% endfor %}
    {{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments '
        'within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, '
        '"arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}"""

_QWEN_TOOL_RESULT = r"""
    {%- elif m.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{ '<|im_start|>user' }}{% endif %}
        {{- '\n<tool_response>\n' + m.content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{ '<|im_end|>\n' }}{% endif %}"""

_QWEN2_5 = (
    r"""
{%- set system = messages[0].content if messages[0].role == 'system'
    else 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' %}
{%- if tools %}
    {{- '<|im_start|>system\n' + system + '\n\n' }}"""
    + _QWEN_TOOL_LIST
    + r"""
{%- else %}{{ '<|im_start|>system\n' + system + '<|im_end|>\n' }}
{%- endif %}
{%- for m in messages %}
    {%- if m.role == 'user' or (m.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}
    {%- elif m.role == 'assistant' and not m.tool_calls %}
        {{- '<|im_start|>assistant\n' + m.content + '<|im_end|>\n' }}
    {%- elif m.role == 'assistant' %}
        {{- '<|im_start|>assistant' }}
        {%- if m.content %}{{ '\n' + m.content }}{% endif %}
        {%- for call in m.tool_calls %}
            {%- set f = call.function if call.function is defined else call %}
            {{- '\n<tool_call>\n{"name": "' + f.name + '", "arguments": ' + f.arguments | tojson
                + '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}"""
    + _QWEN_TOOL_RESULT
    + r"""
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"""
)

_QWEN3 = (
    r"""
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}{{ messages[0].content + '\n\n' }}{% endif %}"""
    + _QWEN_TOOL_LIST
    + r"""
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{#- Reasoning is kept only after the last real user query (tool results wrapped as user text do not count). #}
{%- set ns = namespace(last_query=messages | length - 1, searching=true) %}
{%- for m in messages | reverse %}
    {%- if ns.searching and m.role == 'user'
        and not (m.content.startswith('<tool_response>') and m.content.endswith('</tool_response>')) %}
        {%- set ns.last_query = messages | length - loop.index %}
        {%- set ns.searching = false %}
    {%- endif %}
{%- endfor %}
{%- for m in messages %}
    {%- if m.role == 'user' or (m.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}
    {%- elif m.role == 'assistant' %}
        {%- set content = m.content if m.content is defined else '' %}
        {%- set reasoning = '' %}
        {%- if m.reasoning_content is defined and m.reasoning_content is not none %}
            {%- set reasoning = m.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {%- if (loop.index0 > ns.last_query and (loop.last or reasoning))
            or (keep_history_reasoning is defined and keep_history_reasoning and reasoning) %}
            {{- '<|im_start|>assistant\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n'
                + content.lstrip('\n') }}
        {%- else %}
            {{- '<|im_start|>assistant\n' + content }}
        {%- endif %}
        {%- for call in m.tool_calls or [] %}
            {%- if content or not loop.first %}{{ '\n' }}{% endif %}
            {%- set f = call.function if call.function else call %}
            {{- '<tool_call>\n{"name": "' + f.name + '", "arguments": '
                + (f.arguments if f.arguments is string else f.arguments | tojson) + '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}"""
    + _QWEN_TOOL_RESULT
    + r"""
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""
)

_LLAMA3_CALL_FORMAT = (
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its '
    "value}.Do not use variables.\\n\\n"
)
_LLAMA3 = (
    r"""
{{- bos_token }}
{%- set today = date_string if date_string is defined else '26 Jul 2024' %}
{%- set has_tools = tools is defined and tools is not none %}
{%- set tools_in_user = tools_in_user_message if tools_in_user_message is defined else true %}
{%- if messages[0].role == 'system' %}
    {%- set system = messages[0].content | trim %}
    {%- set rest = messages[1:] %}
{%- else %}
    {%- set system = '' %}
    {%- set rest = messages %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}
{%- if has_tools %}{{ 'Environment: ipython\n' }}{% endif %}
{{- 'Cutting Knowledge Date: December 2023\nToday Date: ' + today + '\n\n' }}
{%- if has_tools and not tools_in_user %}
    {{- 'You have access to the following functions. To call a function, please respond with JSON for a '
        'function call."""
    + _LLAMA3_CALL_FORMAT
    + r"""' }}
    {%- for tool in tools %}{{ tool | tojson(indent=4) + '\n\n' }}{% endfor %}
{%- endif %}
{{- system + '<|eot_id|>' }}
{#- Official default: the tool list goes into the first user message. #}
{%- if has_tools and tools_in_user %}
    {%- if not rest %}{{ raise_exception('llama3 puts tools in the first user message, but there is none.') }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with '
        'a JSON for a function call with its proper arguments that best answers the given prompt.\n\n"""
    + _LLAMA3_CALL_FORMAT
    + r"""' }}
    {%- for tool in tools %}{{ tool | tojson(indent=4) + '\n\n' }}{% endfor %}
    {{- (rest[0].content | trim) + '<|eot_id|>' }}
    {%- set rest = rest[1:] %}
{%- endif %}
{%- for m in rest %}
    {%- if m.role == 'tool' or m.role == 'ipython' %}
        {{- '<|start_header_id|>ipython<|end_header_id|>\n\n' }}
        {%- if m.content is number %}{{ m.content }}{% else %}{{ m.content | tojson }}{% endif %}
        {{- '<|eot_id|>' }}
    {%- elif m.tool_calls %}
        {%- if m.tool_calls | length != 1 %}
            {{- raise_exception('llama3 writes one tool call per assistant message; split parallel calls.') }}
        {%- endif %}
        {%- set f = m.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "' + f.name + '", "parameters": '
            + f.arguments | tojson + '}<|eot_id|>' }}
    {%- else %}
        {{- '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' + m.content | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"""
)

_SPLIT_SYSTEM = r"""
{%- if messages[0].role == 'system' %}
    {%- set system = messages[0].content %}
    {%- set turns = messages[1:] %}
{%- else %}
    {%- set system = none %}
    {%- set turns = messages %}
{%- endif %}"""

_LLAMA2 = (
    _SPLIT_SYSTEM
    + r"""
{%- for m in turns %}"""
    + _only_user_assistant("llama2")
    + r"""
    {%- set text = m.content if not loop.first or system is none
        else '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + m.content %}
    {%- if m.role == 'user' %}{{ bos_token + '[INST] ' + text | trim + ' [/INST]' }}
    {%- else %}{{ ' ' + text | trim + ' ' + eos_token }}
    {%- endif %}
{%- endfor %}"""
)

_MISTRAL = (
    _SPLIT_SYSTEM
    + r"""
{%- set ns = namespace(last_user=-1) %}
{%- for m in turns %}"""
    + _only_user_assistant("mistral")
    + r"""
    {%- if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}
{%- endfor %}
{{- bos_token }}
{%- for m in turns %}
    {%- if m.role == 'user' and loop.index0 == ns.last_user and system is not none %}
        {{- '[INST] ' + system + '\n\n' + m.content + '[/INST]' }}
    {%- elif m.role == 'user' %}{{ '[INST] ' + m.content + '[/INST]' }}
    {%- else %}{{ ' ' + m.content | trim + eos_token }}
    {%- endif %}
{%- endfor %}"""
)

_GEMMA = (
    r"""
{{- bos_token }}"""
    + _SPLIT_SYSTEM
    + r"""
{%- for m in turns %}"""
    + _only_user_assistant("gemma")
    + r"""
    {{- '<start_of_turn>' + ('model' if m.role == 'assistant' else 'user') + '\n' }}
    {%- if loop.first and system is not none %}{{ system + '\n\n' }}{% endif %}
    {{- (m.content | trim) + '<end_of_turn>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"""
)

_PHI3 = r"""
{%- for m in messages %}
    {%- if m.role in ['user', 'assistant'] or (m.role == 'system' and m.content) %}
        {{- '<|' + m.role + '|>\n' + m.content + '<|end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"""

_GLM4 = r"""
{{- '[gMASK]<sop>' }}
{%- for m in messages %}{% if m.content %}{{ '<|' + m.role + '|>\n' + m.content }}{% endif %}{% endfor %}
{%- if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"""

_DEEPSEEK_R1 = r"""
{%- set ns = namespace(system='', last_query=-1) %}
{%- for m in messages %}
    {%- if m.role == 'system' %}{% set ns.system = m.content %}{% endif %}
    {%- if m.role == 'user' %}{% set ns.last_query = loop.index0 %}{% endif %}
    {%- if m.role == 'tool' or m.tool_calls %}
        {{- raise_exception('The deepseek template does not write tool calls or tool results.') }}
    {%- endif %}
{%- endfor %}
{{- bos_token }}{{ ns.system }}
{%- for m in messages %}
    {%- if m.role == 'user' %}{{ '<｜User｜>' + m.content }}
    {%- elif m.role == 'assistant' %}
        {%- set keep = loop.index0 > ns.last_query
            or (keep_history_reasoning is defined and keep_history_reasoning) %}
        {%- if keep and '</think>' in m.content %}
            {#- The reply being trained keeps its reasoning, written as the model generates it. #}
            {%- set reasoning = m.content.split('</think>')[0].split('<think>')[-1].strip('\n') %}
            {{- '<｜Assistant｜><think>\n' + reasoning + '\n</think>' + m.content.split('</think>')[-1] }}
        {%- else %}
            {{- '<｜Assistant｜>' + m.content.split('</think>')[-1] }}
        {%- endif %}
        {{- '<｜end▁of▁sentence｜>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<｜Assistant｜><think>\n' }}{% endif %}"""

_YI = r"""
{%- if messages[0].role == 'system' %}{{ messages[0].content }}{% endif %}
{%- for m in messages %}
    {%- if m.role == 'user' %}{{ '<|im_start|>user\n' + m.content + '<|im_end|>\n<|im_start|>assistant\n' }}
    {%- elif m.role == 'assistant' %}{{ m.content + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}"""

_LLAVA = (
    _SPLIT_SYSTEM
    + r"""
{%- if bos_token %}{{ bos_token }}{% endif %}
{%- if system is not none %}{{ system + ' ' }}{% endif %}
{%- for m in turns %}"""
    + _only_user_assistant("llava")
    + r"""
    {%- if m.role == 'user' %}{{ 'USER: ' + m.content + ' ' }}
    {%- else %}{{ 'ASSISTANT: ' + m.content + eos_token }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"""
)


def _t(name: str, jinja: str, stop_words: list[str], tools: bool, needs: tuple, legend: str) -> ChatTemplate:
    return ChatTemplate(name, jinja.strip("\n"), tuple(stop_words), legend, tools, needs)


_BOS, _EOS, _BOTH = ("bos_token",), ("eos_token",), ("bos_token", "eos_token")
# fmt: off
TEMPLATES: dict[str, ChatTemplate] = {t.name: t for t in [
    #  name        jinja           stop words                                        tools  needs
    _t("default",   _DEFAULT,       ["\nUser:"],                                      False, _EOS,
       "Base models: plain 'User:'/'Assistant:' turns, EOS after each answer."),
    _t("chatml",    _CHATML_TURNS,  ["<|im_end|>"],                                   False, (),
       "Generic ChatML, no default system prompt."),
    _t("qwen2_5",   _QWEN2_5,       ["<|im_end|>", "<|endoftext|>"],                  True,  (),
       "Qwen2.5-Instruct; Qwen's default system prompt when none is given."),
    _t("qwen3",     _QWEN3,         ["<|im_end|>", "<|endoftext|>"],                  True,  (),
       "Qwen3; <think> after the last query; enable_thinking=False pre-fills an empty one."),
    _t("llama3",    _LLAMA3,        ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"],  True,  _BOS,
       "Llama-3.1/3.2/3.3 Instruct; date '26 Jul 2024' unless date_string is passed."),
    _t("llama2",    _LLAMA2,        ["</s>"],                                         False, _BOTH,
       "Llama-2-chat; system in <<SYS>> inside the first [INST]."),
    _t("mistral",   _MISTRAL,       ["</s>"],                                         False, _BOTH,
       "Mistral-7B-Instruct-v0.3; system before the last user message, as mistral_common does."),
    _t("internlm2", "{{- bos_token }}" + _CHATML_TURNS, ["<|im_end|>", "</s>"],       False, _BOS,
       "InternLM2/2.5 chat: BOS then ChatML."),
    _t("gemma",     _GEMMA,         ["<end_of_turn>", "<eos>"],                       False, _BOS,
       "Gemma/Gemma 2 instruct; a system message is folded into the first user turn."),
    _t("phi3",      _PHI3,          ["<|end|>", "<|endoftext|>"],                     False, _EOS,
       "Phi-3/3.5-mini-instruct; EOS closes a training sample."),
    _t("glm4",      _GLM4,          ["<|endoftext|>", "<|user|>", "<|observation|>"], False, (),
       "glm-4-9b-chat; the next role token ends an assistant turn."),
    _t("deepseek",  _DEEPSEEK_R1,   ["<｜end▁of▁sentence｜>"],                         False, _BOS,
       "DeepSeek-R1-Distill; reasoning kept in the turn after the last query, dropped before."),
    _t("yi",        _YI,            ["<|im_end|>", "<|endoftext|>"],                  False, (),
       "Yi-1.5 chat: raw system text, then ChatML user and assistant turns."),
    _t("llava",     _LLAVA,         ["</s>"],                                         False, _EOS,
       "LLaVA-1.5 / vicuna v1: 'USER: <image>\\n.. ASSISTANT: ..</s>'; prompts as llava-hf's template."),
]}
# fmt: on

# Tokens that end a turn in common tokenizers; used to find stop words for ``auto``.
_END_OF_TURN_TOKENS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
    "<｜end▁of▁sentence｜>",
)


def _names() -> str:
    return ", ".join(TEMPLATES)


def get_template(name: str) -> ChatTemplate:
    """Return the built-in template called ``name``.

    Raises:
        ConfigError: ``name`` is not a built-in template; the message lists the closest names and all names.
    """
    if name in TEMPLATES:
        return TEMPLATES[name]
    if name == "auto":
        raise ConfigError(
            "prompt_template 'auto' is not a built-in template: it keeps the tokenizer's own chat_template "
            f"(use set_chat_template). Built-in templates: {_names()}."
        )
    close = difflib.get_close_matches(str(name).lower(), list(TEMPLATES), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(
        f"Unknown prompt_template {name!r}.{hint} Built-in templates: {_names()}; or 'auto' to keep the "
        "tokenizer's own chat_template."
    )


def set_chat_template(tokenizer, name: str) -> ChatTemplate | None:
    """Give ``tokenizer`` the chat template a config asks for.

    Args:
        tokenizer: A ``transformers`` tokenizer; its ``chat_template`` is replaced unless ``name`` is
            ``auto``.
        name: A built-in template name, or ``auto`` to keep the tokenizer's own template.

    Returns:
        The installed :class:`ChatTemplate`, or None for ``auto``.

    Raises:
        ConfigError: ``auto`` but the tokenizer has no template; an unknown name; or the tokenizer lacks a
            special token (BOS/EOS) the template writes.
    """
    source = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
    if name == "auto":
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"prompt_template='auto' keeps the tokenizer's own chat template, but {source} has none "
                f"(a base model?). Set prompt_template to one of the built-in templates: {_names()}."
            )
        return None
    template = get_template(name)
    missing = [token for token in template.requires if getattr(tokenizer, token, None) is None]
    if missing:
        raise ConfigError(
            f"prompt_template={name!r} writes {' and '.join(missing)}, but {source} defines none. Pick a "
            "template that fits this tokenizer, or set the token on the tokenizer."
        )
    tokenizer.chat_template = template.jinja
    return template


def stop_words_for(tokenizer, name: str) -> list[str]:
    """Strings that end an assistant turn when generating with template ``name``.

    A built-in template gives its ``stop_words``; ``auto`` gives the tokenizer's end-of-turn tokens
    (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, ``<|end|>``, ... whichever it has). Both add the
    tokenizer's EOS token.
    """
    words = [] if name == "auto" else list(get_template(name).stop_words)
    eos = getattr(tokenizer, "eos_token", None)
    if eos and eos not in words:
        words.append(eos)
    if name == "auto":
        vocab = tokenizer.get_vocab()
        words += [token for token in _END_OF_TURN_TOKENS if token in vocab and token not in words]
    return words
