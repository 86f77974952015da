"""The built-in training chat templates, one per model family, by the name a base model is registered with
(`template` in TUNEQUEUE_BASE_MODELS) or a job asks for.

Each renders a conversation exactly as the family's published template does for system/user/assistant messages
(tool calls are not rendered), and wraps every assistant turn's content and end-of-turn token in
`{% generation %}` … `{% endgeneration %}`: the role header before it and the separator after it are context.
docs/datasets.md shows what each one renders; tests/common/text/test_families.py checks each against a copy of
the family's published template (tests/fixtures/templates/).
"""

from __future__ import annotations

# ChatML (<|im_start|>role\n…<|im_end|>\n). A message without content (an assistant turn that only calls
# tools) renders as an empty turn.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- (message['content'] or '') + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- (message['content'] or '') + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def chatml_with_default_system(system: str) -> str:
    """ChatML that opens with `system` as a system turn when the conversation has no system message of its own
    (Qwen2.5's and SmolLM2's templates do this)."""
    if "'" in system or "\\" in system:
        raise ValueError("the default system prompt is pasted into a Jinja string: no quotes or backslashes")
    opening = (
        "{%- if messages[0]['role'] != 'system' -%}"
        "{{- '<|im_start|>system\\n" + system + "<|im_end|>\\n' -}}"
        "{%- endif -%}"
    )
    return opening + CHATML_TEMPLATE


QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# Llama 3 (Meta-Llama-3-Instruct): <|begin_of_text|>, then <|start_header_id|>role<|end_header_id|>\n\n
# content (trimmed) <|eot_id|> per message.
LLAMA3_TEMPLATE = r"""
{{- bos_token -}}
{%- for message in messages -%}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' -}}
{%- if message['role'] == 'assistant' -%}
{%- generation -%}{{- (message['content'] or '') | trim + '<|eot_id|>' -}}{%- endgeneration -%}
{%- else -%}
{{- (message['content'] or '') | trim + '<|eot_id|>' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}
""".strip()

# Mistral instruct v3 (Mistral-7B-Instruct-v0.3): <s>[INST] user[/INST] answer</s>. The system message goes
# before the last user message; an answer is a space, its content trimmed and </s>. There is no generation
# prompt: the model answers right after [/INST].
MISTRAL_TEMPLATE = r"""
{%- if messages[0]['role'] == 'system' -%}
{%- set system_message = messages[0]['content'] -%}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set loop_messages = messages -%}
{%- endif -%}
{%- set user_messages = loop_messages | selectattr('role', 'equalto', 'user') | list -%}
{{- bos_token -}}
{%- for message in loop_messages -%}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{- raise_exception('After the optional system message, conversation roles must alternate '
                    + 'user/assistant/user/assistant/...') -}}
{%- endif -%}
{%- if message['role'] == 'user' -%}
{%- if message == user_messages[-1] and system_message is defined -%}
{{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' -}}
{%- else -%}
{{- '[INST] ' + message['content'] + '[/INST]' -}}
{%- endif -%}
{%- else -%}
{%- generation -%}{{- ' ' + (message['content'] or '') | trim + eos_token -}}{%- endgeneration -%}
{%- endif -%}
{%- endfor -%}
""".strip()

# Gemma 2 and 3: <start_of_turn>user\n…<end_of_turn>\n, the assistant is "model", contents trimmed; a system
# message is put at the start of the first user turn (Gemma 3; Gemma 2's own template refuses it).
GEMMA_TEMPLATE = r"""
{{- bos_token -}}
{%- if messages[0]['role'] == 'system' -%}
{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set first_user_prefix = '' -%}
{%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}
{%- endif -%}
{%- if message['role'] == 'assistant' -%}
{{- '<start_of_turn>model\n' -}}
{%- generation -%}{{- (message['content'] or '') | trim + '<end_of_turn>' -}}{%- endgeneration -%}
{{- '\n' -}}
{%- else -%}
{{- '<start_of_turn>' + message['role'] + '\n' + (first_user_prefix if loop.first else '') -}}
{{- (message['content'] or '') | trim + '<end_of_turn>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}
""".strip()

# Phi-3 and Phi-3.5 mini: <|role|>\n…<|end|>\n; a conversation rendered without a generation prompt ends with
# the eos token (<|endoftext|>), which is not trained.
PHI3_TEMPLATE = r"""
{%- for message in messages -%}
{%- if message['role'] == 'system' and message['content'] -%}
{{- '<|system|>\n' + message['content'] + '<|end|>\n' -}}
{%- elif message['role'] == 'user' -%}
{{- '<|user|>\n' + message['content'] + '<|end|>\n' -}}
{%- elif message['role'] == 'assistant' -%}
{{- '<|assistant|>\n' -}}
{%- generation -%}{{- (message['content'] or '') + '<|end|>' -}}{%- endgeneration -%}
{{- '\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|assistant|>\n' -}}{%- else -%}{{- eos_token -}}{%- endif -%}
""".strip()

# Zephyr (zephyr-7b-beta): <|role|>\n…</s>\n, with the role tags as plain text.
ZEPHYR_TEMPLATE = r"""
{%- for message in messages -%}
{%- if message['role'] == 'assistant' -%}
{{- '<|assistant|>\n' -}}
{%- generation -%}{{- (message['content'] or '') + eos_token -}}{%- endgeneration -%}
{{- '\n' -}}
{%- elif message['role'] in ('user', 'system') -%}
{{- '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|assistant|>\n' -}}{%- endif -%}
""".strip()

TEMPLATES: dict[str, str] = {
    "chatml": CHATML_TEMPLATE,
    "qwen2.5": chatml_with_default_system(QWEN25_SYSTEM),
    "smollm2": chatml_with_default_system(SMOLLM2_SYSTEM),
    "llama3": LLAMA3_TEMPLATE,
    "mistral": MISTRAL_TEMPLATE,
    "gemma": GEMMA_TEMPLATE,
    "phi3": PHI3_TEMPLATE,
    "zephyr": ZEPHYR_TEMPLATE,
}
