"""LoRA methods (plain LoRA, L2L, S-LoRA): being written."""
