"""MLLM Audit: attribution, visual reliance and hallucination risk for multimodal LLM answers."""
