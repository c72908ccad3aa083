"""The OpenHCX model: one Llama-compatible decoder, its HF checkpoints, and KV-cache decoding.

transformer.py defines the network and its presets, hf.py reads and writes HF model directories (and
imports GGUF), generate.py decodes. See docs/model.md.
"""

from openhcx.model.transformer import PRESETS, KVCache, ModelConfig, Transformer, model_config

__all__ = ["PRESETS", "KVCache", "ModelConfig", "Transformer", "model_config"]
