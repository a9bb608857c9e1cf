"""Text embedders: the local sentence-transformers model or an OpenAI-compatible server."""

from ragtune.embed.embedders import Embedder, HttpEmbedder, LocalEmbedder, build_embedder

__all__ = ["Embedder", "HttpEmbedder", "LocalEmbedder", "build_embedder"]
