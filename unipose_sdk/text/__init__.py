"""Text side: the text tokenizer with UniPose's added tokens, and prompt building for the seven tasks."""
