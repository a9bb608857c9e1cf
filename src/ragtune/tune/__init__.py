"""Adapting ragtune to an organisation's own documents: synthetic question sets made from its
index (`ragtune synth`: `synth`, with the no-model question rules in `rules` and the LLM's in
`llm`), which evaluation and fine-tuning then read."""
