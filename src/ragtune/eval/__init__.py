"""Retrieval and answer evaluation on BEIR-format datasets (SQuAD answers included)."""
