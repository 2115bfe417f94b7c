"""Generative models: decoder-only and encoder-decoder language modelling, prompted generation and
translation (data, encoding, generation settings, metrics, training), plus the decoder runtime
pieces: ONNX export with a KV cache, an ONNX Runtime generation loop, weight-only quantization and
decoder compression helpers."""
