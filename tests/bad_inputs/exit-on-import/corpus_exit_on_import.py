"""A reward module that ends the process when imported."""

import sys

sys.exit(0)


def score(prompts, completions, **columns):
    return [0.0 for _ in completions]
