"""Prompt-tuning methods (L2P, S-Prompts, DualPrompt): being written."""
