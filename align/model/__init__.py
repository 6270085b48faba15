"""Models: resolving and loading (built-in, local folder, hub id), the tiny test model, our
attention kernel, tokenisation of records, and sequence log-probabilities.
"""
