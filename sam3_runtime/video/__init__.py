"""Streaming video tracking: bounded per-stream object memories and batched tracker steps."""
