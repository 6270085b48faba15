"""align: align language models from explicit rewards and preferences.

Packages, lowest first; each imports only packages listed before it:
core, config, data, model, generate, llm, rewards, rewrite, train, judging, stages, pipeline.
No package imports Prefect or DVC (flows/ and tasks/ do).
"""
