"""Model-building tools: convert, merge LoRA, quantize, legacy files."""
