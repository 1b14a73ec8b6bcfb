"""Command-line tools for a trained model: export (ONNX), extract (features), search (faiss), visualise."""
