"""Text side: the text tokenizer with UniPose's added tokens, and prompt building for the seven tasks."""

from unipose_sdk.text.prompts import (
    TASK_INPUTS,
    TASK_TEMPLATES,
    PromptBuilder,
    PromptInputs,
    PromptRow,
    Task,
    chat_prompt,
    task_user_turn,
)
from unipose_sdk.text.tokenizer import TextTokenizer, added_token_names, build_tiny_tokenizer, check_layout

__all__ = [
    "TASK_INPUTS", "TASK_TEMPLATES", "PromptBuilder", "PromptInputs", "PromptRow", "Task", "TextTokenizer",
    "added_token_names", "build_tiny_tokenizer", "chat_prompt", "check_layout", "task_user_turn",
]
