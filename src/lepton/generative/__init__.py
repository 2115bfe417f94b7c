"""Generative (decoder-only) models: ONNX export with a KV cache, an ONNX Runtime generation loop,
weight-only quantization and decoder compression helpers, each a standalone module working on a
plain transformers ``AutoModelForCausalLM`` and its tokenizer."""
