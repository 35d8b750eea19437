"""Exporters: ONNX (onnx.helper graph) and TFLite (TF graph + converter), both from fused weights."""
