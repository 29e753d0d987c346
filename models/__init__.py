"""Backbones and heads through timm and open_clip, method-specific models, CLIP encoders for caching."""
