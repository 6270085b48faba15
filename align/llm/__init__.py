"""Asking an LLM for an answer: the backend protocol, the OpenAI-compatible HTTP and local-model
backends, the persistent answer cache, and the rating / pairwise-preference prompts and parsers
that judge-based rewards, the rewriter and the judge stage share.
"""
